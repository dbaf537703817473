"""The agent's link to its management server: the transport (MessageStream), the session
(startup, pings, dispatch of commands), what a command costs (byte budget) and where it runs
(TaskQueue), and the runtime state kept in state.dir."""
