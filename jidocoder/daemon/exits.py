"""Exit codes a session process leaves with: the only words it says on its way out."""

EXIT_OK = 0              # asked to stop (SIGTERM) or the daemon is gone
EXIT_BOOT_ERROR = 70     # could not start serving (a bug or a bad spec)
EXIT_STORE_DAMAGED = 71  # its database is not usable: the daemon moves it to damaged/
EXIT_STORE_FAILED = 72   # a write failed: exiting is the only way back to the stored state
EXIT_PROTOCOL = 73       # the daemon sent bytes that are not frames: the link is unusable

NAMES = {
    EXIT_BOOT_ERROR: "boot error",
    EXIT_STORE_DAMAGED: "store damaged",
    EXIT_STORE_FAILED: "store write failed",
    EXIT_PROTOCOL: "protocol error",
}
