//! SNMP trap receiving (being built).
