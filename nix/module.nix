# SPDX-License-Identifier: GPL-2.0-or-later
# services.pr-helper: the packaged pr-helper.socket (enabled) and
# pr-helper.service (started by the socket), /etc/pr-helper/config.toml
# rendered from `settings`, and optionally libvirtd's QEMU pointed at it.
{ config, options, lib, pkgs, ... }:

let
  cfg = config.services.pr-helper;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "pr-helper.toml" cfg.settings;
in
{
  options.services.pr-helper = {
    enable = lib.mkEnableOption "pr-helper, the SCSI persistent reservation helper for QEMU";

    package = lib.mkOption {
      type = lib.types.package;
      defaultText = lib.literalExpression "pr-helper from this flake";
      description = "The pr-helper package.";
    };

    settings = lib.mkOption {
      type = settingsFormat.type;
      default = { };
      example = { verbosity = 2; allowed_uids = [ 0 107 ]; sgio_timeout = 60; };
      description = ''
        pr-helper configuration, written to /etc/pr-helper/config.toml (keys as
        in pr-helper(8) and docs/config.toml.example). Do not set `socket`
        (the socket unit passes it) nor `user`/`group` (the unit runs a
        dynamic user without CAP_SETUID/CAP_SETGID).
      '';
    };

    socketGroup = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "kvm";
      description = "Group allowed to connect to /run/qemu-pr-helper.sock (mode 0660); null keeps 0600 root.";
    };

    libvirtd.enable = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Point libvirtd's QEMU at pr-helper: `pr_helper` in qemu.conf (managed
        reservations), after NixOS' default qemu.conf lines (`namespaces = []`),
        which this keeps: do not repeat them in your own verbatimConfig.
        Unmanaged disks use the socket /run/qemu-pr-helper.sock.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(cfg.settings ? socket) && !(cfg.settings ? user) && !(cfg.settings ? group);
        message = "services.pr-helper.settings: socket, user and group cannot be set under the socket unit";
      }
    ];

    environment.systemPackages = [ cfg.package ];
    environment.etc."pr-helper/config.toml".source = configFile;

    systemd.packages = [ cfg.package ];
    systemd.sockets.pr-helper = {
      wantedBy = [ "sockets.target" ];
      socketConfig = lib.mkIf (cfg.socketGroup != null) {
        SocketGroup = cfg.socketGroup;
        SocketMode = "0660";
      };
    };
    systemd.services.pr-helper.restartTriggers = [ configFile ];

    # Any definition of verbatimConfig replaces the option's default
    # (`namespaces = []` in NixOS), so the default is kept explicitly.
    virtualisation.libvirtd.qemu.verbatimConfig = lib.mkIf cfg.libvirtd.enable (lib.mkMerge [
      (lib.mkBefore options.virtualisation.libvirtd.qemu.verbatimConfig.default)
      (lib.mkAfter ''
        pr_helper = "${cfg.package}/bin/pr-helper"
      '')
    ]);
  };
}
