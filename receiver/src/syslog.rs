//! syslog (being built)
