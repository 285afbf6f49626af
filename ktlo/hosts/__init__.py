"""Hosts: the inventory and running commands on hosts over SSH (or locally), for any domain."""
