"""Releases for the units: RAUC bundles built and signed on the signing PC (build.py), the
signed descriptor the console offers (descriptor.py), `pingan-centre release …` (cli.py)."""
