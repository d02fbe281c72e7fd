"""An installation's data over its life: uninstall cleanup, personal data reports and erasure."""
