# SPDX-License-Identifier: GPL-2.0-or-later
# A stand-in for nixpkgs, for evaluating flake.nix and nix/ where nixpkgs
# cannot be fetched (packaging/test.sh nix). lib (lib.nix) has a module
# system with nixpkgs' documented semantics; pkgs has only what our
# expressions use, with the same names and shapes. Derivations are real
# (builder /bin/sh) but are never built.
let
  lib = import ./lib.nix;
  systems = [ "x86_64-linux" "aarch64-linux" ];

  mkDrv = system: name: attrs: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "echo stub derivation, not buildable >&2; exit 1" ];
  } // { passthru = attrs; meta = attrs.meta or { }; };

  pkgsFor = system: isStatic:
    let
      pkgs = {
        inherit lib system;
        stdenv.hostPlatform = {
          inherit system isStatic;
          # pkgsStatic builds for musl.
          config = builtins.replaceStrings [ "-linux" ] [ (if isStatic then "-unknown-linux-musl" else "-unknown-linux-gnu") ] system;
        };
        installShellFiles = mkDrv system "installShellFiles" { };
        rustPlatform.buildRustPackage = attrs:
          assert attrs ? cargoLock.lockFile && builtins.pathExists attrs.cargoLock.lockFile;
          mkDrv system "${attrs.pname}${if isStatic then "-static-${pkgs.stdenv.hostPlatform.config}" else ""}-${attrs.version}" attrs
          // { inherit (pkgs.stdenv) hostPlatform; };
        callPackage = f: extra:
          let fn = if builtins.isFunction f then f else import f;
          in fn (builtins.intersectAttrs (builtins.functionArgs fn) pkgs // extra);
        formats.toml = { }: {
          type = lib.types.attrsOf lib.types.tomlValue;
          # A derivation standing for the file; the value kept for tests.
          generate = name: value: mkDrv system name { } // { inherit value; };
        };
        pkgsStatic = pkgsFor system true;
        # NixOS tests: the nodes are evaluated with evalModules against the
        # NixOS options our modules use (nixos.nix); nothing boots.
        testers.runNixOSTest = test:
          let
            t = if builtins.isFunction test then test { inherit pkgs lib; } else test;
            nodes = builtins.mapAttrs
              (name: node: lib.evalModules {
                modules = [ ./nixos.nix node ];
                specialArgs = { inherit pkgs; };
              })
              t.nodes;
          in
          assert builtins.isString t.name && builtins.isString t.testScript;
          mkDrv system "vm-test-run-${t.name}" { inherit nodes; inherit (t) testScript; };
      };
    in
    pkgs;
in
{
  inherit lib;
  legacyPackages = lib.genAttrs systems (s: pkgsFor s false);
}
