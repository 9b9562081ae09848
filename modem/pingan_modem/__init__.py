"""The 4G modem's protocol, shared by the unit (edge.modem) and the township
(pingan_centre.console.sms): the AT port and its line reader (`at`), SMS PDUs (`pdu`),
each vendor's habits as data (`profiles`) and validated readings (`signal`).

No station, console or hardware here: only a serial port opened by URL (a pty in the
tests), so both sides send an SMS the same way and neither imports the other."""

__version__ = "0.1.0"
