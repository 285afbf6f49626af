"""The hosts domain: running commands on inventory hosts as a step (`host.run`)."""
