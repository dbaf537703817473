"""The daemon: the composition root (app), the connect loop (supervisor), the MS list
(mslist), the ordered stop (shutdown), signals and the watchdog (signals), certificate
housekeeping (certwatch), and systemd notifications (sdnotify)."""
