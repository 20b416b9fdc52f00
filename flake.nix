# SPDX-License-Identifier: GPL-2.0-or-later
# pr-helper for Nix:
#   nix run .#          the default package: glibc build (rustPlatform)
#   nix run .#static    the static build: musl, through pkgsStatic
#   nix build .#, nix build .#static
#   nixosModules.default adds services.pr-helper (socket-activated, hardened
#   units from systemd/); checks: both builds and a NixOS VM test of the
#   module (nix flake check, or nix build .#checks.x86_64-linux.vm).
#
# nixpkgs: the stable channel nixos-26.05 (released 2026-05, supported until
# 2026-12-31; move to nixos-26.11 once it is released). Its Rust is 1.95.0,
# above Cargo.toml's rust-version (1.85): nixpkgs file
# pkgs/development/compilers/rust/1_95.nix (rustcVersion = "1.95.0";
# read at nixpkgs commit 01b36d3e2638a5a0b91bb28d95f675eded5c8a8a), in since
# nixpkgs PR #510674 "rust: 1.94.1 -> 1.95.0" (2026-04-16, before the 26.05
# branch-off).
# flake.lock is not committed yet: it cannot be produced offline (it needs
# the nixpkgs tree's NAR hash). Produce it with `nix flake lock` on a
# machine with network (docs/packaging.md, Nix); packaging/test.sh nix
# checks its shape once it exists.
{
  description = "pr-helper: drop-in replacement for QEMU's qemu-pr-helper";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
      app = drv: what: {
        type = "app";
        program = "${drv}/bin/pr-helper";
        meta.description = "pr-helper (${what})";
      };
    in
    {
      packages = forAllSystems (system: pkgs: rec {
        pr-helper = pkgs.callPackage ./nix/package.nix { };
        # musl, statically linked (pkgsStatic: the same expression built
        # for the host's *-unknown-linux-musl with static linking).
        static = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
        default = pr-helper;
      });

      apps = forAllSystems (system: pkgs: {
        default = app self.packages.${system}.default "glibc build";
        static = app self.packages.${system}.static "static musl build";
      });

      checks = forAllSystems (system: pkgs: {
        package = self.packages.${system}.default;
        static = self.packages.${system}.static;
        # Boots a NixOS VM with services.pr-helper: socket activation, a
        # client ping, PR IN/OUT on an LIO disk, the hardening in /proc.
        vm = pkgs.testers.runNixOSTest (import ./nix/vm-test.nix { inherit self; });
      });

      overlays.default = final: prev: {
        pr-helper = final.callPackage ./nix/package.nix { };
      };

      nixosModules.default = { pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        services.pr-helper.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
    };
}
