# SPDX-License-Identifier: GPL-2.0-or-later
# A small module system with the semantics of nixpkgs' lib.evalModules, for
# evaluating nix/module.nix offline (packaging/test.sh nix). nixpkgs' own
# lib cannot be had here: no Debian, PyPI, npm or crates.io package ships
# it (docs/packaging.md, Nix). Written from the documented behaviour (NixOS
# manual, "Writing NixOS Modules" and "Option Types"), not from nixpkgs'
# code.
#
# Real semantics (as documented):
#   - modules are functions or attribute sets, with imports, options and
#     config, or the shorthand (everything is config); function modules get
#     config, options, lib, pkgs and the special arguments;
#   - a definition of an option nobody declared is an error ("The option
#     `a.b' does not exist"), also under a false mkIf;
#   - mkIf (condition must be a Boolean), mkMerge, pushed down through
#     attribute sets; mkOverride/mkDefault/mkForce: only the definitions of
#     the highest priority (lowest number) count, the option's default is a
#     definition of priority 1500 (mkOptionDefault); mkOrder/mkBefore/mkAfter
#     sort definitions for lists and lines;
#   - types check every definition ("is not of type") and merge them: bool,
#     str, int and package must agree, listOf concatenates, attrsOf and
#     submodule merge per attribute, lines joins with newlines, nullOr,
#     unitOption (systemd settings: lists concatenate, scalars must agree),
#     the TOML value type of pkgs.formats.toml;
#   - an option without definitions and default fails when read.
# Imitated: option descriptions, documentation, _module.args, freeform
# types and most types do not exist; error messages are shorter.
let
  inherit (builtins)
    all any attrNames concatLists concatStringsSep elem filter foldl' genList head isAttrs
    isBool isFloat isFunction isInt isList isPath isString length listToAttrs map tail throw;

  showLoc = loc: concatStringsSep "." loc;
  genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
  mapAttrs = builtins.mapAttrs;
  uniq = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  isDerivation = v: isAttrs v && (v.type or null) == "derivation";
  isOption = v: isAttrs v && (v._type or null) == "option";
  isType = t: v: isAttrs v && (v._type or null) == t;

  # ------------------------------------------------------------ properties
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkOrder = priority: content: { _type = "order"; inherit priority content; };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;
  defaultPriority = 100;
  defaultOrder = 1000;

  # An attribute-set definition (possibly under properties) as a list of
  # plain attribute sets whose values carry the properties.
  pushDown = v:
    if isType "merge" v then concatLists (map pushDown v.contents)
    else if isType "if" v then map (mapAttrs (n: mkIf v.condition)) (pushDown v.content)
    else if isType "override" v then map (mapAttrs (n: mkOverride v.priority)) (pushDown v.content)
    else if isType "order" v then map (mapAttrs (n: mkOrder v.priority)) (pushDown v.content)
    else [ v ];

  # One definition of an option as a list of { value, priority, order }:
  # mkMerge splits, a false mkIf drops.
  discharge = loc: v:
    if isType "merge" v then concatLists (map (discharge loc) v.contents)
    else if isType "if" v then
      (if !isBool v.condition
      then throw "mkIf called with a non-Boolean condition in the definition of `${showLoc loc}'"
      else if v.condition then discharge loc v.content else [ ])
    else if isType "override" v then
      map (d: d // { priority = v.priority; }) (discharge loc v.content)
    else if isType "order" v then
      map (d: d // { order = v.priority; }) (discharge loc v.content)
    else [{ value = v; priority = defaultPriority; order = defaultOrder; }];

  # Stable sort by order (insertion sort: the lists are short).
  sortByOrder = defs: foldl'
    (sorted: d:
      let
        before = filter (x: x.order <= d.order) sorted;
        after = filter (x: x.order > d.order) sorted;
      in
      before ++ [ d ] ++ after)
    [ ]
    defs;

  # The definitions that count: the highest priority wins, then sorted.
  effective = loc: defs:
    let
      flat = concatLists (map (d: map (x: x // { inherit (d) file; }) (discharge loc d.value)) defs);
      best = foldl' (m: d: if d.priority < m then d.priority else m) 9999 flat;
    in
    sortByOrder (filter (d: d.priority == best) flat);

  # --------------------------------------------------------------- options
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  # The value of option `opt` at `loc` from its definitions.
  evalOption = loc: opt: defs:
    let
      type = opt.type or types.unspecified;
      all' = defs ++ (if opt ? default then [{ file = "default of ${showLoc loc}"; value = mkOptionDefault opt.default; }] else [ ]);
      eff = effective loc all';
      checked = map
        (d:
          if type.check d.value then d
          else throw "A definition for option `${showLoc loc}' is not of type `${type.description}' (in ${d.file}).")
        eff;
    in
    if eff == [ ] then throw "The option `${showLoc loc}' was accessed but has no value defined."
    else type.merge loc checked;

  # Declarations: merge the options trees of all modules.
  mergeDecls = a: b:
    if isOption a || isOption b then
      (if isOption a && isOption b then throw "an option is declared twice" else
      throw "an option is declared where another module declares a set of options")
    else a // mapAttrs (n: v: if a ? ${n} then mergeDecls a.${n} v else v) b;

  # config under a declarations tree, from a list of { file, value }.
  evalTree = loc: decls: defs:
    let
      pushed = concatLists (map (d: map (value: { inherit (d) file; inherit value; }) (pushDown d.value)) defs);
      bad = filter (d: !isAttrs d.value) pushed;
      names = uniq (concatLists (map (d: attrNames d.value) pushed));
      undeclared = filter (n: !(decls ? ${n})) names;
      defsOf = n: concatLists (map (d: if d.value ? ${n} then [{ inherit (d) file; value = d.value.${n}; }] else [ ]) pushed);
    in
    if bad != [ ] then throw "`${showLoc loc}' is a set of options, but ${(head bad).file} defines it as a value"
    else if undeclared != [ ] then
      throw "The option `${showLoc (loc ++ [ (head undeclared) ])}' does not exist. Definition in ${(head (defsOf (head undeclared))).file}."
    else mapAttrs
      (n: d: if isOption d then evalOption (loc ++ [ n ]) d (defsOf n) else evalTree (loc ++ [ n ]) d (defsOf n))
      decls;

  # The options tree with the evaluated values (options.a.b.value etc.).
  annotate = loc: decls: config: mapAttrs
    (n: d: if isOption d then d // { value = config.${n}; loc = loc ++ [ n ]; } else annotate (loc ++ [ n ]) d config.${n})
    decls;

  evalModules = { modules, specialArgs ? { }, prefix ? [ ] }:
    let
      args = specialArgs // { inherit lib config options; };
      load = file: m:
        let
          fn = if isPath m || isString m then import m else m;
          file' = if isPath m || isString m then toString m else file;
          v = if isFunction fn then fn (builtins.intersectAttrs (builtins.functionArgs fn) args) else fn;
          structured = v ? options || v ? config;
          self = {
            file = file';
            options = v.options or { };
            config = if structured then v.config or { } else removeAttrs v [ "imports" "_file" "key" ];
          };
        in
        [ self ] ++ concatLists (genList (i: load "${file'} (import ${toString i})" (builtins.elemAt (v.imports or [ ]) i)) (length (v.imports or [ ])));
      loaded = concatLists (genList (i: load "module ${toString i}" (builtins.elemAt modules i)) (length modules));
      decls = foldl' mergeDecls { } (map (m: m.options) loaded);
      config = evalTree prefix decls (map (m: { inherit (m) file; value = m.config; }) loaded);
      options = annotate prefix decls config;
    in
    { inherit config options; };

  # ----------------------------------------------------------------- types
  mkOptionType = { name, description ? name, check ? (x: true), merge ? mergeEqual }: {
    _type = "option-type";
    inherit name description check merge;
  };
  mergeEqual = loc: defs:
    let first = (head defs).value; in
    if all (d: d.value == first) (tail defs) then first
    else throw "The option `${showLoc loc}' has conflicting definition values (${concatStringsSep ", " (map (d: d.file) defs)}).";
  values = defs: map (d: d.value) defs;

  types = rec {
    unspecified = mkOptionType { name = "unspecified"; merge = loc: defs: if length defs == 1 then (head defs).value else mergeEqual loc defs; };
    raw = unspecified;
    anything = unspecified;
    bool = mkOptionType { name = "bool"; description = "boolean"; check = isBool; };
    int = mkOptionType { name = "int"; description = "signed integer"; check = isInt; };
    str = mkOptionType { name = "str"; description = "string"; check = isString; };
    lines = mkOptionType {
      name = "lines";
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = loc: defs: concatStringsSep "\n" (values defs);
    };
    path = mkOptionType { name = "path"; check = v: isPath v || isString v || isDerivation v || (isAttrs v && v ? outPath); };
    package = mkOptionType { name = "package"; check = v: isDerivation v || isPath v; };
    attrs = mkOptionType { name = "attrs"; description = "attribute set"; check = isAttrs; merge = loc: defs: foldl' (a: b: a // b) { } (values defs); };
    nullOr = t: mkOptionType {
      name = "nullOr";
      description = "null or ${t.description}";
      check = v: v == null || t.check v;
      merge = loc: defs:
        let nulls = filter (d: d.value == null) defs; in
        if length nulls == length defs then null
        else if nulls == [ ] then t.merge loc defs
        else throw "The option `${showLoc loc}' is defined both null and not null.";
    };
    listOf = t: mkOptionType {
      name = "listOf";
      description = "list of ${t.description}";
      check = isList;
      merge = loc: defs: concatLists (map
        (d: genList
          (i:
            let v = builtins.elemAt d.value i; in
            if t.check v then v
            else throw "A definition for option `${showLoc loc}.[${toString i}]' is not of type `${t.description}' (in ${d.file}).")
          (length d.value))
        defs);
    };
    attrsOf = t: mkOptionType {
      name = "attrsOf";
      description = "attribute set of ${t.description}";
      check = isAttrs;
      merge = loc: defs:
        let
          pushed = concatLists (map (d: map (value: { inherit (d) file; inherit value; }) (pushDown d.value)) defs);
          names = uniq (concatLists (map (d: attrNames d.value) pushed));
          defsOf = n: concatLists (map (d: if d.value ? ${n} then [{ inherit (d) file; value = d.value.${n}; }] else [ ]) pushed);
          merged = map (n: { name = n; value = evalOption (loc ++ [ n ]) { type = t; } (defsOf n); defined = effective (loc ++ [ n ]) (defsOf n) != [ ]; }) names;
        in
        listToAttrs (map (m: { inherit (m) name value; }) (filter (m: m.defined) merged));
    };
    submodule = module: mkOptionType {
      name = "submodule";
      check = v: isAttrs v || isFunction v;
      merge = loc: defs: (evalModules {
        prefix = loc;
        specialArgs.name = builtins.elemAt loc (length loc - 1);
        modules = [ module ] ++ map (d: { _file = d.file; config = d.value; }) defs;
      }).config;
    };
    # systemd unit settings (NixOS' unitOption): lists concatenate, a
    # single value must agree.
    unitOption = mkOptionType {
      name = "systemd option";
      check = v: isBool v || isInt v || isString v || isPath v || isDerivation v || isList v;
      merge = loc: defs:
        if all (d: isList d.value) defs then concatLists (values defs)
        else mergeEqual loc defs;
    };
    # The value type of pkgs.formats.toml.
    tomlValue = mkOptionType {
      name = "TOML value";
      check = v: isAttrs v || isList v || isBool v || isInt v || isFloat v || isString v || isPath v;
      merge = loc: defs:
        if all (d: isAttrs d.value) defs then (attrsOf tomlValue).merge loc defs
        else if all (d: isList d.value) defs then concatLists (values defs)
        else mergeEqual loc defs;
    };
  };

  lib = {
    inherit genAttrs mkIf mkMerge mkOverride mkOptionDefault mkDefault mkForce mkOrder mkBefore mkAfter
      mkOption mkEnableOption literalExpression mkOptionType evalModules types isDerivation;
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    cleanSourceWith = { src, filter, name ? "source" }: builtins.path { path = src; inherit name filter; };
    optionalAttrs = c: a: if c then a else { };
    licenses = {
      gpl2Plus = { spdxId = "GPL-2.0-or-later"; };
      mit = { spdxId = "MIT"; };
      asl20 = { spdxId = "Apache-2.0"; };
      bsd3 = { spdxId = "BSD-3-Clause"; };
    };
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };
in
lib
