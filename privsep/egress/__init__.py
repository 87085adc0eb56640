"""Egress by host name (issue 17): the pure parts, kept apart from the I/O that will drive them.

Nothing here touches a socket, a clock or a thread; every function is a
decision or a codec over bytes and values handed in, so each is unit-tested
in microseconds and fuzzed, and the broker adds only the I/O around it:

- :mod:`.dnswire`: a strict, bounded DNS message codec for the sandbox's resolver;
- :mod:`.names`: may the sandbox learn addresses for a name, and which record types are served;
- :mod:`.answered`: the addresses the resolver gave a sandbox, for which names, until when;
- :mod:`.admit`: may a connect to an address go ahead, given the rules and those answers;
- :mod:`.target`: what a proxy client asks to reach (host, port, IP literal or name);
- :mod:`.proxyhttp`: the HTTP proxy's request head (CONNECT and absolute-form), forwarding, errors;
- :mod:`.proxysocks`: SOCKS5 (RFC 1928), no authentication, CONNECT only.

Internal: nothing here is public API. Imports only the standard library and
:mod:`privsep.policy`.
"""
