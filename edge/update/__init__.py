"""Over-the-air updates (issue 22): the township offers a signed RAUC bundle, the unit
checks its signature, streams into the other root slot the blocks it lacks (capped,
resuming), reboots into it once (the Pi's tryboot), and commits only when the new slot pages the
township; otherwise it falls back to the old slot and says why.

    verify.py    signatures (descriptor: openssl CMS; bundle: `rauc info --keyring`), hashes
    stream.py    the local HTTP server RAUC streams from: capped, resumed, blocks kept
    tryboot.py   RAUC's custom bootloader back-end: slot state in the FAT's pingan-slots.txt
    install.py   the installer seam: `rauc install` on a unit, `rauc extract` into slot files
    updater.py   the station's part: update.offer → events → install → reboot (never during
                 an alarm or the siren)
    commit.py    after the trial boot: healthy → mark-good, else roll back (with why)
"""
