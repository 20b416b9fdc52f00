# SPDX-License-Identifier: GPL-2.0-or-later
# A stand-in for nixpkgs, for evaluating flake.nix and nix/ where nixpkgs
# cannot be fetched (packaging/test.sh). Only what our expressions use, with
# the same names and shapes; derivations are real (builder /bin/sh) but are
# never built.
let
  system = "x86_64-linux";
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  lib = rec {
    inherit genAttrs;
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    cleanSourceWith = { src, filter, ... }: builtins.path { path = src; name = "source"; inherit filter; };
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption { type = types.bool; default = false; description = "Whether to enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
    mkAfter = content: { _type = "order"; priority = 1500; inherit content; };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    types = {
      bool = { name = "bool"; };
      str = { name = "str"; };
      package = { name = "package"; };
      nullOr = t: { name = "nullOr"; elemType = t; };
    };
    licenses = {
      gpl2Plus = { spdxId = "GPL-2.0-or-later"; };
      mit = { spdxId = "MIT"; };
      asl20 = { spdxId = "Apache-2.0"; };
      bsd3 = { spdxId = "BSD-3-Clause"; };
    };
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };
  mkDrv = name: attrs: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "echo stub derivation, not buildable >&2; exit 1" ];
  } // { passthru = attrs; meta = attrs.meta or { }; };
  pkgs = rec {
    inherit lib system;
    installShellFiles = mkDrv "installShellFiles" { };
    rustPlatform.buildRustPackage = attrs:
      assert attrs ? cargoLock.lockFile && builtins.pathExists attrs.cargoLock.lockFile;
      mkDrv "${attrs.pname}-${attrs.version}" attrs;
    callPackage = f: extra:
      let fn = if builtins.isFunction f then f else import f;
      in fn (builtins.intersectAttrs (builtins.functionArgs fn) pkgs // extra);
    formats.toml = { }: {
      type = { name = "toml"; };
      # The value itself stands for the generated file (no store writes).
      generate = name: value: { inherit name value; };
    };
  };
in
{
  inherit lib;
  legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] (s: pkgs // { system = s; });
}
