"""Certificates: the host's keys and certificate sets, the MS trust, libvirt's and QEMU's PKI.

* :mod:`~agent.certs.keys` — new keys and CSRs (the only user of ``cryptography``, imported
  when a key is made);
* :mod:`~agent.certs.verify` — validation by OpenSSL: a TLS handshake of the set with itself
  (chain, key match, dates, purposes);
* :mod:`~agent.certs.certinfo` — PEM blocks and a certificate's dates and names, read
  without ``cryptography``;
* :mod:`~agent.certs.store` — cert.dir's sets, switched by one atomic rename; PKI links;
* :mod:`~agent.certs.trust` — the client TLS context to the MS (cloud.ca.crt as anchors);
* :mod:`~agent.certs.system_pki` — libvirt/QEMU PKI paths and whether the host is "secured";
* :mod:`~agent.certs.dhparams` — QEMU's DH parameters;
* :mod:`~agent.certs.libvirtd` — making libvirtd use a new certificate;
* :mod:`~agent.certs.expiry` — the host certificate's expiry warning.
"""
