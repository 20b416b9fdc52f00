# SPDX-License-Identifier: GPL-2.0-or-later
# The stub nixpkgs as a flake: nix flake check --override-input nixpkgs path:<this dir>.
{
  description = "stub nixpkgs for checking pr-helper's flake offline";
  outputs = { self }: import ./default.nix;
}
