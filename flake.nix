# SPDX-License-Identifier: GPL-2.0-or-later
# pr-helper for Nix: `nix run` starts the helper (as root, or with
# CAP_SYS_RAWIO), `nix build` builds it, and nixosModules.default adds
# services.pr-helper (socket-activated, hardened units from systemd/).
{
  description = "pr-helper: drop-in replacement for QEMU's qemu-pr-helper";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        pr-helper = pkgs.callPackage ./nix/package.nix { };
        default = pr-helper;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.system}.default}/bin/pr-helper";
        };
      });

      overlays.default = final: prev: {
        pr-helper = final.callPackage ./nix/package.nix { };
      };

      nixosModules.default = { pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        services.pr-helper.package =
          nixpkgs.lib.mkDefault self.packages.${pkgs.system}.default;
      };
    };
}
