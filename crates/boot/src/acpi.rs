//! ACPI tables (written by the ACPI module owner).
