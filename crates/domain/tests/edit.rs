//! setmem / setmaxmem / setvcpus --config.

use vireo_domain::Domain;

fn domain() -> Domain {
    Domain::from_xml(
        "<domain type='kvm'><name>e</name><memory unit='GiB'>2</memory><currentMemory unit='GiB'>1</currentMemory>\
         <vcpu current='2'>4</vcpu><os><type>hvm</type><kernel>/k</kernel></os><features><acpi/></features>\
         <cpu mode='host-passthrough'><topology sockets='1' cores='4' threads='1'/></cpu></domain>",
    )
    .unwrap()
    .domain
}

/// The change survives dumpxml and a new parse.
fn reparsed(d: &Domain) -> Domain {
    Domain::from_xml(&d.to_xml()).unwrap().domain
}

#[test]
fn setmem_and_setmaxmem() {
    let mut d = domain();
    d.set_memory(1536 << 10).unwrap();
    assert_eq!(reparsed(&d).current_memory_kib, 1536 << 10);
    assert!(d
        .to_xml()
        .contains("<currentMemory unit='KiB'>1572864</currentMemory>"));
    assert_eq!(
        d.set_memory(3 << 20).unwrap_err().to_string(),
        "/domain/currentMemory: cannot set memory to 3 GiB, more than the maximum of 2 GiB (raise it with setmaxmem)"
    );
    assert_eq!(
        d.set_memory(0).unwrap_err().to_string(),
        "/domain/currentMemory: the memory size must be greater than 0"
    );
    assert_eq!(
        d.current_memory_kib,
        1536 << 10,
        "a refused change changes nothing"
    );
    d.set_max_memory(4 << 20).unwrap();
    assert_eq!((d.memory_kib, d.current_memory_kib), (4 << 20, 1536 << 10));
    d.set_max_memory(1 << 20).unwrap(); // lowers currentMemory too
    assert_eq!((d.memory_kib, d.current_memory_kib), (1 << 20, 1 << 20));
    assert_eq!(reparsed(&d), d);
    assert!(d.set_max_memory(0).is_err());
    assert!(d
        .set_max_memory(u64::MAX)
        .unwrap_err()
        .to_string()
        .contains("does not fit"));
}

#[test]
fn setvcpus_current_and_maximum() {
    let mut d = domain();
    d.set_vcpus(3, false).unwrap();
    assert_eq!((d.vcpu.max, d.vcpu.current), (4, 3));
    assert!(d.to_xml().contains("<vcpu current='3'>4</vcpu>"));
    assert_eq!(
        d.set_vcpus(5, false).unwrap_err().to_string(),
        "/domain/vcpu/@current: 5 vCPUs is more than the maximum of 4 (raise it with --maximum)"
    );
    assert_eq!(
        d.set_vcpus(0, false).unwrap_err().to_string(),
        "/domain/vcpu: the vCPU count must be at least 1"
    );
    d.set_vcpus(8, true).unwrap();
    assert_eq!((d.vcpu.max, d.vcpu.current), (8, 3));
    assert_eq!(d.cpu.as_ref().unwrap().topology.as_ref().unwrap().cores, 8);
    assert_eq!(reparsed(&d), d);
    d.set_vcpus(2, true).unwrap(); // lowers current too
    assert_eq!((d.vcpu.max, d.vcpu.current), (2, 2));
    assert!(d.to_xml().contains("<vcpu>2</vcpu>"));
    assert_eq!(reparsed(&d), d);
    assert_eq!(
        d.set_vcpus(256, true).unwrap_err().to_string(),
        "/domain/vcpu: 256 vCPUs is above vireo's limit of 255 (8-bit xAPIC IDs)"
    );
    d.set_vcpus(255, true).unwrap();
    assert_eq!(d.validate(), Ok(()));
}
