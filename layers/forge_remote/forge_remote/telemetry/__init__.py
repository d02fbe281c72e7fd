"""Log lines and metrics, written the way the functions' own are."""
