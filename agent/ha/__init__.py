"""HA: this host's heartbeat on shared pools, the neighbours' read for the MS's
investigators (CheckOnHost, Fence), and fencing when the heartbeat cannot be written.

beat.py: the heartbeat file and kvmheartbeat.sh's reading of it (pure, plus blocking file
calls); heartbeat.py: the Heartbeat service (a task of the agent that follows the pools);
fence.py: the host reboot of ``ha.fence.reboot``.
"""
