# SPDX-License-Identifier: GPL-2.0-or-later
# Evaluates flake.nix's outputs against the stub nixpkgs: the packages, the
# NixOS module through lib.evalModules (lib.nix: NixOS' option semantics)
# with the NixOS options it sets (nixos.nix), and the VM test's node.
# Returns what a test can compare (packaging/test.sh runs it with
# nix-instantiate --eval --strict --json).
{ root }:
let
  stub = import ./default.nix;
  inherit (stub) lib;
  pkgs = stub.legacyPackages.x86_64-linux;
  # The flake's outputs with the stub as nixpkgs (self: the fixpoint).
  flake = (import (root + "/flake.nix")).outputs { self = flake // { outPath = root; }; nixpkgs = stub; };
  package = flake.packages.x86_64-linux.default;
  static = flake.packages.x86_64-linux.static;

  eval = cfg: lib.evalModules {
    modules = [ ./nixos.nix flake.nixosModules.default cfg ];
    specialArgs = { inherit pkgs; };
  };
  full = {
    services.pr-helper = {
      enable = true;
      settings = { verbosity = 2; allowed_uids = [ 0 107 ]; };
      socketGroup = "kvm";
      libvirtd.enable = true;
    };
  };
  on = (eval full).config;
  off = (eval { }).config;
  # A module error: evaluating `what` throws.
  fails = what: !(builtins.tryEval (builtins.deepSeq what true)).success;
  vmNode = flake.checks.x86_64-linux.vm.passthru.nodes.machine.config;
in
{
  package = {
    name = package.name;
    license = map (l: l.spdxId) package.meta.license;
    main = package.meta.mainProgram;
    lock = baseNameOf package.passthru.cargoLock.lockFile;
  };
  static = { name = static.name; target = static.hostPlatform.config; isStatic = static.hostPlatform.isStatic; };
  apps = builtins.mapAttrs (n: a: a.program) flake.apps.x86_64-linux;
  checks = builtins.attrNames flake.checks.x86_64-linux;
  checkNames = builtins.mapAttrs (n: c: c.name) flake.checks.x86_64-linux;

  # Enabled with every option set.
  systemPackages = map (p: p.name) on.environment.systemPackages;
  systemdPackages = map (p: p.name) on.systemd.packages;
  configToml = on.environment.etc."pr-helper/config.toml".source.value;
  socketWantedBy = on.systemd.sockets.pr-helper.wantedBy;
  socketConfig = on.systemd.sockets.pr-helper.socketConfig;
  restartTriggers = map (t: t.name) on.systemd.services.pr-helper.restartTriggers;
  libvirtQemuConf = on.virtualisation.libvirtd.qemu.verbatimConfig;
  assertionsHold = builtins.all (a: a.assertion) on.assertions;
  # Defaults: no socket group, no libvirt line, the package from the flake.
  defaultSocketConfig = (eval { services.pr-helper.enable = true; }).config.systemd.sockets.pr-helper.socketConfig;
  defaultQemuConf = (eval { services.pr-helper.enable = true; }).config.virtualisation.libvirtd.qemu.verbatimConfig;
  # mkIf cfg.enable: nothing when disabled.
  disabled = {
    sockets = off.systemd.sockets;
    etc = off.environment.etc;
    packages = off.systemd.packages;
    assertions = off.assertions;
  };
  # The module's assertion refuses socket/user/group in settings.
  socketRejected = !(builtins.all (a: a.assertion)
    (eval { services.pr-helper = { enable = true; settings.socket = "/x"; }; }).config.assertions);
  # Real option semantics: a wrong type, an unknown option and a package
  # conflicting with the flake's default are errors; mkForce wins.
  errors = {
    socketGroupNotString = fails (eval { services.pr-helper = { enable = true; socketGroup = 5; }; }).config.systemd.sockets;
    enableNotBool = fails (eval { services.pr-helper.enable = "yes"; }).config.systemd.sockets;
    unknownOption = fails (eval { services.pr-helper = { enable = true; socketPath = "/x"; }; }).config;
    packageOverride = (eval { services.pr-helper = { enable = true; package = lib.mkForce static; }; }).config.systemd.packages
      == [ static ];
  };
  # The units the package installs (systemd/, ExecStart rewritten into the
  # store by postInstall): the settings the VM test relies on.
  units =
    let
      lines = f: builtins.filter builtins.isString (builtins.split "\n" (builtins.readFile (root + "/systemd/${f}")));
      values = f: key: builtins.concatMap (l: let m = builtins.match "${key}=(.*)" l; in if m == null then [ ] else m) (lines f);
    in
    {
      listenStream = values "pr-helper.socket" "ListenStream";
      socketMode = values "pr-helper.socket" "SocketMode";
      execStart = values "pr-helper.service" "ExecStart";
      dynamicUser = values "pr-helper.service" "DynamicUser";
      capabilityBoundingSet = values "pr-helper.service" "CapabilityBoundingSet";
      ambientCapabilities = values "pr-helper.service" "AmbientCapabilities";
      noNewPrivileges = values "pr-helper.service" "NoNewPrivileges";
      rewritesExecStart = builtins.match ".*--replace-fail /usr/bin/pr-helper [$]out/bin/pr-helper.*" package.passthru.postInstall != null;
      installsUnits = builtins.match ".*-t [$]out/lib/systemd/system systemd/pr-helper.socket systemd/pr-helper.service.*" package.passthru.postInstall != null;
    };
  vm = {
    testScript = flake.checks.x86_64-linux.vm.passthru.testScript;
    enabled = vmNode.services.pr-helper.enable;
    kernelModules = vmNode.boot.kernelModules;
    sockets = builtins.attrNames vmNode.systemd.sockets;
    testScriptChecks = map (s: lib.isDerivation flake.checks.x86_64-linux.vm && builtins.match ".*${s}.*" flake.checks.x86_64-linux.vm.passthru.testScript != null)
      [ "pr-helper ping" "--read-keys" "CapEff" "NoNewPrivs" "Seccomp" "DynamicUser" "tcm_loop" ];
  };
}
