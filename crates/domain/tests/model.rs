//! Parsing details: generated identifiers, defaults, namespaces, text that must survive.

use vireo_domain::*;

const MIN: &str = "<domain type='kvm'><name>m</name><memory>65536</memory>\
<os><type>hvm</type><kernel>/k</kernel></os><features><acpi/></features>DEVICES</domain>";

fn min(devices: &str) -> String {
    MIN.replace("DEVICES", devices)
}

#[test]
fn generated_uuid_and_mac_and_defaults() {
    let a = Domain::from_xml(&min(
        "<devices><interface type='bridge'><source bridge='br0'/></interface></devices>",
    ))
    .unwrap();
    let b = Domain::from_xml(&min("")).unwrap();
    assert_ne!(a.domain.uuid, b.domain.uuid);
    assert_eq!(&a.domain.uuid.to_string()[14..15], "4");
    let i = a.domain.interfaces().next().unwrap();
    assert_eq!(&i.mac.0[..3], &[0x52, 0x54, 0x00]);
    assert_eq!(
        a.warnings,
        vec!["/domain/devices/interface: no <model type=…/>: vireo gives the guest a virtio network device"]
    );
    // The generated values are part of the definition from now on.
    let again = Domain::from_xml(&a.domain.to_xml()).unwrap();
    assert_eq!(again.domain, a.domain);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    let d = b.domain;
    assert_eq!((d.vcpu.max, d.vcpu.current), (1, 1));
    assert_eq!(d.os.arch, "x86_64");
    assert_eq!(d.current_memory_kib, d.memory_kib);
    assert_eq!(
        (d.on_poweroff, d.on_reboot, d.on_crash),
        (
            LifecycleAction::Destroy,
            LifecycleAction::Restart,
            LifecycleAction::Destroy
        )
    );
}

#[test]
fn missing_acpi_is_warned() {
    let p = Domain::from_xml(&min("").replace("<features><acpi/></features>", "")).unwrap();
    assert_eq!(
        p.warnings,
        vec!["no <features><acpi/>: vireo always gives the guest ACPI (power button, shutdown)"]
    );
}

#[test]
fn byte_units_round_up_to_kib() {
    let p = Domain::from_xml(
        &MIN.replace("<memory>65536</memory>", "<memory unit='b'>1000</memory>")
            .replace("DEVICES", ""),
    )
    .unwrap();
    assert_eq!(p.domain.memory_kib, 1);
    let p = Domain::from_xml(
        &MIN.replace("<memory>65536</memory>", "<memory unit='GB'>1</memory>")
            .replace("DEVICES", ""),
    )
    .unwrap();
    assert_eq!(p.domain.memory_kib, 976563); // 10^9 / 1024, rounded up
}

#[test]
fn prefixes_declared_on_domain_are_redeclared_on_kept_elements() {
    let xml = "<domain type='kvm' xmlns:app='urn:example:app'><name>n</name>\
        <metadata><app:info><app:owner>me</app:owner></app:info></metadata>\
        <memory>65536</memory><os><type>hvm</type></os><features><acpi/></features></domain>";
    let d = Domain::from_xml(xml).unwrap().domain;
    let out = d.to_xml();
    assert!(
        out.contains("  <metadata>\n    <app:info xmlns:app='urn:example:app'>\n      <app:owner>me</app:owner>\n    </app:info>\n  </metadata>\n"),
        "{out}"
    );
    assert_eq!(Domain::from_xml(&out).unwrap().domain, d);
}

#[test]
fn text_with_special_characters_survives() {
    let xml = MIN
        .replace("<kernel>/k</kernel>", "<kernel>/k</kernel><cmdline>console=ttyS0 init=\"/bin/sh -c 'a &amp;&amp; b &lt; c'\"  x</cmdline>")
        .replace("DEVICES", "<description>  line 1\n\tline 2 &amp; ]]&gt; \"q\" 'a'\n</description>");
    let d = Domain::from_xml(&xml).unwrap().domain;
    assert_eq!(
        d.os.cmdline.as_deref(),
        Some("console=ttyS0 init=\"/bin/sh -c 'a && b < c'\"  x")
    );
    assert_eq!(
        d.description.as_deref(),
        Some("  line 1\n\tline 2 & ]]> \"q\" 'a'\n")
    );
    let back = Domain::from_xml(&d.to_xml()).unwrap().domain;
    assert_eq!(back, d);
}

#[test]
fn validate_checks_models_built_in_code() {
    let mut d = Domain::from_xml(&min("")).unwrap().domain;
    assert_eq!(d.validate(), Ok(()));
    d.name = "a/b".into();
    assert_eq!(
        d.validate().unwrap_err().to_string(),
        "/domain/name: 'a/b' contains '/'"
    );
    d.name = "ok".into();
    d.vcpu.current = 2;
    assert_eq!(
        d.validate().unwrap_err().to_string(),
        "/domain/vcpu/@current: 2 is more than the maximum of 1"
    );
    // and JSON that deserialises still goes through validate before use
    d.vcpu.current = 1;
    let json = serde_json::to_string(&d).unwrap();
    let back: Domain = serde_json::from_str(&json).unwrap();
    assert_eq!(back.validate(), Ok(()));
    assert!(
        serde_json::from_str::<Domain>(&json.replace(&d.uuid.to_string(), "not-a-uuid")).is_err()
    );
}
