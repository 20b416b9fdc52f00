# SPDX-License-Identifier: GPL-2.0-or-later
# The NixOS options our module and the VM test's node use, declared with
# the types NixOS declares them with (nixos/modules: misc/assertions.nix,
# config/system-path.nix, system/etc/etc.nix, system/boot/systemd.nix and
# systemd-unit-options, virtualisation/libvirtd.nix, qemu-vm.nix), so that
# evaluating nix/module.nix with lib.evalModules (packaging/nix-stub/lib.nix)
# type-checks and merges our definitions as NixOS would. Anything else is
# "does not exist", as in NixOS for an unknown option.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  unitOptions = {
    wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
    requiredBy = mkOption { type = types.listOf types.str; default = [ ]; };
    restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    environment = mkOption { type = types.attrsOf types.str; default = { }; };
  };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };

    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          source = mkOption { type = types.path; };
          text = mkOption { type = types.nullOr types.lines; default = null; };
          mode = mkOption { type = types.str; default = "symlink"; };
        };
      });
      default = { };
    };

    systemd.packages = mkOption { type = types.listOf types.package; default = [ ]; };
    systemd.sockets = mkOption {
      type = types.attrsOf (types.submodule {
        options = unitOptions // {
          listenStreams = mkOption { type = types.listOf types.str; default = [ ]; };
          socketConfig = mkOption { type = types.attrsOf types.unitOption; default = { }; };
        };
      });
      default = { };
    };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule {
        options = unitOptions // {
          serviceConfig = mkOption { type = types.attrsOf types.unitOption; default = { }; };
        };
      });
      default = { };
    };

    boot.kernelModules = mkOption { type = types.listOf types.str; default = [ ]; };

    virtualisation.memorySize = mkOption { type = types.int; default = 1024; };
    virtualisation.libvirtd.enable = mkOption { type = types.bool; default = false; };
    virtualisation.libvirtd.qemu.verbatimConfig = mkOption {
      type = types.lines;
      default = ''
        namespaces = []
      '';
    };
  };
}
