#!/usr/bin/env python3
"""Runs one SIPVicious tool (Debian package `sipvicious`) from a chosen
loopback source address, optionally with another User-Agent.

Usage: sv_run.py SOURCE_IP USER_AGENT|- TOOL [tool arguments...]
  TOOL is svmap, svwar or svcrack. SipVicious 0.3.3's `-b` option is
  parsed but never reaches the socket, so the socket's bind is redirected
  here. A USER_AGENT other than "-" replaces the default
  "friendly-scanner": a scanner hiding its name, to show that the limits
  and the uniform answers hold without the User-Agent check.
"""
import importlib
import socket
import sys

source, user_agent, tool = sys.argv[1], sys.argv[2], sys.argv[3]

_bind = socket.socket.bind


def bind(self, address):
    if isinstance(address, tuple) and address[0] in ("", "0.0.0.0"):
        address = (source,) + tuple(address[1:])
    return _bind(self, address)


socket.socket.bind = bind
sys.path.insert(0, "/usr/share/sipvicious")
from sipvicious.libs import svhelper  # noqa: E402

if user_agent != "-":
    defaults = list(svhelper.makeRequest.__defaults__)
    defaults = [user_agent if d == "friendly-scanner" else d for d in defaults]
    svhelper.makeRequest.__defaults__ = tuple(defaults)

sys.argv = [tool] + sys.argv[4:]
importlib.import_module("sipvicious." + tool).main()
