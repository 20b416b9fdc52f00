# SPDX-License-Identifier: GPL-2.0-or-later
# NixOS VM test of services.pr-helper, for pkgs.testers.runNixOSTest
# (flake.nix: checks.<system>.vm; run it with `nix flake check` or
# `nix build .#checks.x86_64-linux.vm -L` on a host with KVM).
#
# In the guest: the socket listens after boot and the service is not yet
# running; `pr-helper ping` activates it; the running service holds only
# CAP_SYS_RAWIO, has no_new_privs and a seccomp filter and runs as a
# dynamic user; PR OUT REGISTER and PR IN READ KEYS on a disk that
# implements persistent reservations: an LIO (the kernel's SCSI target)
# file-backed LUN seen through a tcm_loop initiator as /dev/sdX (QEMU's
# emulated disks and scsi_debug do not implement PERSISTENT RESERVE).
{ self }:
{
  name = "pr-helper";

  nodes.machine = { ... }: {
    imports = [ self.nixosModules.default ];
    services.pr-helper = {
      enable = true;
      settings.verbosity = 1;
    };
    boot.kernelModules = [ "configfs" "target_core_mod" "target_core_file" "tcm_loop" "sg" "sd_mod" ];
    virtualisation.memorySize = 1024;
  };

  testScript = ''
    import re

    sock = "/run/qemu-pr-helper.sock"
    lio = "/sys/kernel/config/target"
    tpg = lio + "/loopback/naa.5001405000000001/tpgt_1"

    machine.wait_for_unit("sockets.target")

    with subtest("socket activation: listening, service not started"):
        machine.wait_for_unit("pr-helper.socket")
        machine.succeed(f"test -S {sock}")
        assert machine.succeed(f"stat -c %a {sock}").strip() == "600"
        machine.fail("systemctl is-active pr-helper.service")
        machine.succeed("grep -q 'verbosity = 1' /etc/pr-helper/config.toml")

    with subtest("a client ping starts the service"):
        machine.succeed(f"pr-helper ping -k {sock}")
        machine.wait_for_unit("pr-helper.service")

    with subtest("hardening visible in /proc"):
        pid = machine.succeed("systemctl show -p MainPID --value pr-helper.service").strip()
        assert pid not in ("", "0"), pid
        status = machine.succeed(f"cat /proc/{pid}/status")
        print(status)

        def field(name):
            m = re.search(rf"^{name}:\s*(\S+)", status, re.M)
            assert m, f"no {name} in /proc/{pid}/status"
            return m.group(1)

        for cap in ("CapEff", "CapPrm", "CapBnd"):
            assert field(cap) == "0000000000020000", f"{cap} {field(cap)}: not CAP_SYS_RAWIO only"
        assert field("NoNewPrivs") == "1"
        assert field("Seccomp") == "2"
        assert field("Uid") != "0"
        assert machine.succeed("systemctl show -p DynamicUser --value pr-helper.service").strip() == "yes"
        assert machine.succeed(f"ps -o user= -p {pid}").strip() == "pr-helper"

    with subtest("LIO disk with persistent reservations"):
        machine.succeed(
            "modprobe -a configfs target_core_mod target_core_file tcm_loop sg sd_mod",
            "mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config",
            "truncate -s 16M /root/lun0.img",
            f"mkdir -p {lio}/core/fileio_0/disk0",
            f"echo fd_dev_name=/root/lun0.img,fd_dev_size=16777216 > {lio}/core/fileio_0/disk0/control",
            f"echo prhvmtest0 > {lio}/core/fileio_0/disk0/wwn/vpd_unit_serial",
            f"echo 1 > {lio}/core/fileio_0/disk0/enable",
            f"mkdir -p {tpg}/lun/lun_0",
            f"echo naa.5001405bbbbbbbb1 > {tpg}/nexus",
            f"ln -s {lio}/core/fileio_0/disk0 {tpg}/lun/lun_0/port0",
        )
        address = machine.succeed(f"cat {tpg}/address").strip()
        dev = machine.wait_until_succeeds(
            f"d=$(ls /sys/class/scsi_device/{address}:0/device/block) && test -b /dev/$d && echo /dev/$d"
        ).strip()

    with subtest("PR OUT and PR IN through the socket-activated service"):
        out = machine.succeed(f"pr-helper persist -k {sock} -d {dev} --read-keys")
        assert "NO registered reservation keys" in out, out
        out = machine.succeed(f"pr-helper persist -k {sock} -d {dev} --register --sa-key 0x1234")
        assert "command successful" in out, out
        out = machine.succeed(f"pr-helper persist -k {sock} -d {dev} --read-keys")
        assert "0x1234" in out, out
        machine.succeed("systemctl is-active pr-helper.service")
  '';
}
