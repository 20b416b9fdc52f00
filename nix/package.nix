# SPDX-License-Identifier: GPL-2.0-or-later
# pr-helper built from this tree with the crates pinned by Cargo.lock.
{ lib, rustPlatform, installShellFiles }:

rustPlatform.buildRustPackage {
  pname = "pr-helper";
  version = (lib.importTOML ../Cargo.toml).package.version;

  # The tree without build output.
  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type:
      !(builtins.elem (baseNameOf path) [ "target" ".git" "result" ]);
  };

  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--bin" "pr-helper" ];
  # Unit tests only: the integration tests need devices and privileges.
  cargoTestFlags = [ "--lib" ];

  nativeBuildInputs = [ installShellFiles ];

  postInstall = ''
    installManPage packaging/generated/pr-helper.8
    installShellCompletion --cmd pr-helper \
      --bash packaging/generated/pr-helper.bash \
      --zsh packaging/generated/_pr-helper \
      --fish packaging/generated/pr-helper.fish
    install -D -m 0644 -t $out/lib/systemd/system systemd/pr-helper.socket systemd/pr-helper.service
    substituteInPlace $out/lib/systemd/system/pr-helper.service \
      --replace-fail /usr/bin/pr-helper $out/bin/pr-helper
    install -D -m 0644 -t $out/share/doc/pr-helper \
      docs/config.toml.example systemd/socket-group.conf.example systemd/mpath.conf.example
  '';

  meta = {
    description = "Drop-in replacement for QEMU's qemu-pr-helper (SCSI persistent reservations)";
    homepage = "https://github.com/pr-helper/pr-helper";
    # pr-helper and the crates linked into it (packaging/licenses/license-expression).
    license = with lib.licenses; [ gpl2Plus mit asl20 bsd3 ];
    mainProgram = "pr-helper";
    platforms = lib.platforms.linux;
  };
}
