//! libvirt-compatible domain XML for vireo: parsed into a typed [`Domain`], produced back
//! (`dumpxml`), validated, edited (`setmem`/`setvcpus --config`) and turned into the VMM's
//! configuration ([`vireo_vmm::VmConfig`]).
//!
//! ```
//! use vireo_domain::Domain;
//!
//! let xml = "<domain type='kvm'>
//!   <name>demo</name>
//!   <memory unit='MiB'>512</memory>
//!   <vcpu>2</vcpu>
//!   <os><type arch='x86_64'>hvm</type><kernel>/boot/vmlinuz</kernel></os>
//!   <features><acpi/><apic/></features>
//! </domain>";
//! let parsed = Domain::from_xml(xml).unwrap();
//! assert!(parsed.warnings.is_empty());
//! let domain = parsed.domain;
//! assert_eq!(domain.memory_kib, 512 * 1024);
//! // dumpxml round-trips:
//! assert_eq!(Domain::from_xml(&domain.to_xml()).unwrap().domain, domain);
//! let cfg = domain.to_vm_config(vireo_vmm::ConsoleConfig::Stdio).unwrap();
//! assert_eq!(cfg.cpus, 2);
//! ```
//!
//! Which elements are kept, refused or modelled: [`classify`] and docs/domain-xml.md.
//! `vireo install` (virt-install's options → a [`Domain`]): [`install`].

pub mod classify;
mod edit;
mod error;
mod ids;
pub mod install;
pub mod model;
mod parse;
pub mod units;
mod validate;
mod vmconfig;
mod write;
pub mod xml;

pub use edit::{BlkRow, IfRow};
pub use error::DomainError;
pub use ids::{MacAddr, Uuid};
pub use model::*;
pub use parse::{Parsed, MAX_XML_BYTES};
pub use validate::{check_name, MAX_NAME_LEN};
pub use xml::XmlElement;

impl Domain {
    /// Parses a libvirt domain definition. Kept-but-unused elements and approximations are
    /// reported in [`Parsed::warnings`]; anything vireo cannot honour is an error naming
    /// the element's path. A missing `<uuid>` is generated, a missing interface `<mac>`
    /// too (`52:54:00:…`).
    pub fn from_xml(xml: &str) -> Result<Parsed, DomainError> {
        parse::parse(xml)
    }

    /// The definition as libvirt-style XML (`dumpxml`): parsing it gives an equal
    /// [`Domain`]; `<metadata>` and kept elements come back verbatim.
    pub fn to_xml(&self) -> String {
        write::domain(self).to_string_indented(0)
    }
}
