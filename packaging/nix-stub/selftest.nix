# SPDX-License-Identifier: GPL-2.0-or-later
# The stub module system (lib.nix) against the behaviour the NixOS manual
# documents, so that the module test (eval.nix) cannot pass on a stub that
# merges wrongly. packaging/test.sh nix expects every value to be true.
let
  lib = import ./lib.nix;
  inherit (lib) mkOption types mkIf mkMerge mkDefault mkForce mkBefore mkAfter;
  decl = {
    options = {
      s = mkOption { type = types.str; default = "default"; };
      n = mkOption { type = types.nullOr types.int; default = null; };
      l = mkOption { type = types.listOf types.str; default = [ "d" ]; };
      t = mkOption { type = types.lines; default = "first"; };
      a = mkOption { type = types.attrsOf types.int; default = { }; };
      b = mkOption { type = types.bool; default = false; };
      sub = mkOption {
        type = types.attrsOf (types.submodule ({ name, ... }: {
          options.x = mkOption { type = types.int; default = 1; };
          options.who = mkOption { type = types.str; default = name; };
        }));
        default = { };
      };
    };
  };
  cfg = modules: (lib.evalModules { modules = [ decl ] ++ modules; }).config;
  fails = v: !(builtins.tryEval (builtins.deepSeq v true)).success;
  # A check that throws counts as false (and names itself in the test).
  ok = v: let r = builtins.tryEval v; in r.success && r.value == true;
in
builtins.mapAttrs (name: ok) {
  defaultWhenUndefined = (cfg [ ]).s == "default";
  definitionBeatsDefault = (cfg [{ s = "x"; }]).s == "x";
  mkDefaultBeatsOptionDefault = (cfg [{ s = mkDefault "d"; }]).s == "d";
  definitionBeatsMkDefault = (cfg [{ s = mkDefault "d"; } { s = "x"; }]).s == "x";
  mkForceBeatsDefinition = (cfg [{ s = "x"; } { s = mkForce "f"; }]).s == "f";
  conflictingStrings = fails (cfg [{ s = "x"; } { s = "y"; }]).s;
  equalStringsMerge = (cfg [{ s = "x"; } { s = "x"; }]).s == "x";
  listsConcatenateWithoutDefault = (cfg [{ l = [ "a" ]; } { l = [ "b" ]; }]).l == [ "a" "b" ];
  listOrder = (cfg [{ l = mkAfter [ "z" ]; } { l = [ "m" ]; } { l = mkBefore [ "a" ]; }]).l == [ "a" "m" "z" ];
  linesJoinAndDropDefault = (cfg [{ t = "one"; } { t = mkAfter "two"; }]).t == "one\ntwo";
  linesKeepDefaultOnlyUndefined = (cfg [ ]).t == "first";
  mkIfFalseDrops = (cfg [{ s = mkIf false "x"; }]).s == "default";
  mkIfTrueKeeps = (cfg [{ s = mkIf true "x"; }]).s == "x";
  mkIfNonBool = fails (cfg [{ s = mkIf "yes" "x"; }]).s;
  mkIfPushedDown = (cfg [ (mkIf false { s = "x"; }) ]).s == "default";
  mkMergeSplits = (cfg [ (mkMerge [{ l = [ "a" ]; } { l = [ "b" ]; }]) ]).l == [ "a" "b" ];
  undeclaredFails = fails (cfg [{ nope = 1; }]);
  undeclaredUnderFalseMkIfFails = fails (cfg [ (mkIf false { nope = 1; }) ]);
  wrongTypeFails = fails (cfg [{ b = "true"; }]).b;
  wrongListElementFails = fails (cfg [{ l = [ 1 ]; }]).l;
  nullOrNull = (cfg [ ]).n == null;
  nullOrValue = (cfg [{ n = 3; }]).n == 3;
  attrsOfMergesPerName = (cfg [{ a.x = 1; } { a.y = 2; }]).a == { x = 1; y = 2; };
  attrsOfMkIfFalseAbsent = (cfg [{ a = { x = 1; y = mkIf false 2; }; }]).a == { x = 1; };
  attrsOfConflict = fails (cfg [{ a.x = 1; } { a.x = 2; }]).a;
  submoduleDefaultsAndName = (cfg [{ sub.foo = { }; }]).sub.foo == { x = 1; who = "foo"; };
  submoduleMerges = (cfg [{ sub.foo.x = 2; } { sub.foo.who = "w"; }]).sub.foo == { x = 2; who = "w"; };
  submoduleUnknownFails = fails (cfg [{ sub.foo.nope = 1; }]).sub;
  functionModules = (lib.evalModules {
    modules = [ decl ({ config, ... }: { l = [ config.s ]; }) { s = "v"; } ];
  }).config.l == [ "v" ];
  importsFollowed = (cfg [{ imports = [{ s = "imp"; }]; }]).s == "imp";
}
