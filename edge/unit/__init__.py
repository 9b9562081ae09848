"""The unit's own hardware and life: buttons, the alarm LED, pins, the local control
socket, systemd's watchdog, first boot and the township's bundle."""
