# SPDX-License-Identifier: GPL-2.0-or-later
# Evaluates the package and the NixOS module against the stub nixpkgs and
# returns what a test can compare (packaging/test.sh runs it with
# nix-instantiate --eval --strict --json).
{ root }:
let
  stub = import ./default.nix;
  pkgs = stub.legacyPackages.x86_64-linux;
  lib = stub.lib;
  package = pkgs.callPackage (root + "/nix/package.nix") { };
  module = import (root + "/nix/module.nix");
  evalWith = cfg: module {
    inherit lib pkgs;
    config.services.pr-helper = {
      enable = true;
      inherit package;
      settings = { verbosity = 2; allowed_uids = [ 0 107 ]; };
      socketGroup = "kvm";
      libvirtd.enable = true;
    } // cfg;
  };
  on = evalWith { };
  c = on.config.content;
in
{
  package = { name = package.name; license = map (l: l.spdxId) package.meta.license; main = package.meta.mainProgram;
    lock = baseNameOf package.passthru.cargoLock.lockFile; };
  options = builtins.attrNames on.options.services.pr-helper;
  enabled = on.config.condition;
  disabledWhenOff = !(evalWith { enable = false; }).config.condition;
  assertionsHold = builtins.all (a: a.assertion) c.assertions;
  socketRejected = !(builtins.all (a: a.assertion)
    (evalWith { settings = { socket = "/x"; }; }).config.content.assertions);
  configToml = c.environment.etc."pr-helper/config.toml".source.value;
  socketWantedBy = c.systemd.sockets.pr-helper.wantedBy;
  socketConfig = c.systemd.sockets.pr-helper.socketConfig.content;
  libvirtQemuConf = c.virtualisation.libvirtd.qemu.verbatimConfig.content.content;
}
