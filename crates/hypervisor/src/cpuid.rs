//! CPUID: CPU templates and the SMP topology a guest sees.
//!
//! vireo models `n` vCPUs as `n` single-threaded cores of one socket, with APIC ID = vCPU
//! index. Every leaf that encodes topology (1, 4, 0xB, 0x1F, 0x8000_0008, 0x8000_001E) is
//! rewritten per vCPU so that all of them agree with the MADT the guest also reads.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use serde::{Deserialize, Serialize};

/// Named CPU models selectable with `--cpu-template`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuTemplate {
    /// Everything KVM can virtualize on this host (the default).
    #[default]
    Host,
    /// A conservative x86-64 model: hides instruction-set extensions that some nested or
    /// emulating hosts cannot execute for a guest kernel (CMPXCHG16B, the XSAVE family and
    /// AVX*, POPCNT, MOVBE, AES/PCLMUL, RDRAND/RDSEED, FMA/F16C, every leaf-7 extension,
    /// LZCNT/SSE4a/XOP/FMA4/TBM). Guests fall back to SSE2-era code paths.
    Baseline,
}

impl CpuTemplate {
    pub const ALL: [CpuTemplate; 2] = [CpuTemplate::Host, CpuTemplate::Baseline];

    pub fn name(self) -> &'static str {
        match self {
            CpuTemplate::Host => "host",
            CpuTemplate::Baseline => "baseline",
        }
    }
}

impl std::str::FromStr for CpuTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown CPU template '{s}' (known: host, baseline)"))
    }
}

impl std::fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// Leaf 1 ECX bits.
const L1_ECX_PCLMULQDQ: u32 = 1 << 1;
const L1_ECX_MONITOR: u32 = 1 << 3;
const L1_ECX_FMA: u32 = 1 << 12;
const L1_ECX_CX16: u32 = 1 << 13;
const L1_ECX_MOVBE: u32 = 1 << 22;
const L1_ECX_POPCNT: u32 = 1 << 23;
const L1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const L1_ECX_AES: u32 = 1 << 25;
const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_F16C: u32 = 1 << 29;
const L1_ECX_RDRAND: u32 = 1 << 30;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX bits.
const L1_EDX_HTT: u32 = 1 << 28;
// Leaf 0x8000_0001 ECX bits.
const E1_ECX_ABM: u32 = 1 << 5;
const E1_ECX_SSE4A: u32 = 1 << 6;
const E1_ECX_MISALIGNSSE: u32 = 1 << 7;
const E1_ECX_XOP: u32 = 1 << 11;
const E1_ECX_FMA4: u32 = 1 << 16;
const E1_ECX_TBM: u32 = 1 << 21;

/// Leaf 1 ECX bits KVM computes at run time (OSXSAVE follows the guest's CR4).
pub const DYNAMIC_LEAF1_ECX: u32 = L1_ECX_OSXSAVE;

/// Leaves removed entirely by the baseline template (XSAVE state, SGX, PT, AMX, ...).
const BASELINE_REMOVED_LEAVES: &[u32] = &[0xd, 0x12, 0x14, 0x19, 0x1d, 0x1e, 0x24];

/// Brand string used when the host's CPUID does not provide one.
const DEFAULT_BRAND: &str = "vireo virtual CPU";

/// Builds the CPUID a given vCPU should see.
///
/// `supported` is KVM_GET_SUPPORTED_CPUID; `tsc_deadline` whether KVM emulates the
/// TSC-deadline timer (KVM reports it as a capability rather than in the CPUID).
pub fn vcpu_cpuid(
    supported: &[kvm_cpuid_entry2],
    template: CpuTemplate,
    vcpu_index: u32,
    vcpu_count: u32,
    tsc_deadline: bool,
) -> Vec<kvm_cpuid_entry2> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.to_vec();
    if template == CpuTemplate::Baseline {
        apply_baseline(&mut entries);
    }
    normalize_features(&mut entries, tsc_deadline);
    set_topology(&mut entries, vcpu_index, vcpu_count);
    ensure_brand(&mut entries);
    entries
}

/// Wraps entries as KVM's `CpuId` for KVM_SET_CPUID2.
pub fn to_kvm_cpuid(entries: &[kvm_cpuid_entry2]) -> CpuId {
    CpuId::from_entries(entries).expect("CPUID entry count bounded by KVM's own list")
}

fn leaf_mut(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
    index: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
}

fn leaf(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

fn is_intel(entries: &[kvm_cpuid_entry2]) -> bool {
    leaf(entries, 0, 0).is_some_and(|e| e.ebx == u32::from_le_bytes(*b"Genu"))
}

fn apply_baseline(entries: &mut Vec<kvm_cpuid_entry2>) {
    entries.retain(|e| !BASELINE_REMOVED_LEAVES.contains(&e.function));
    if let Some(e) = leaf_mut(entries, 1, 0) {
        e.ecx &= !(L1_ECX_PCLMULQDQ
            | L1_ECX_MONITOR
            | L1_ECX_FMA
            | L1_ECX_CX16
            | L1_ECX_MOVBE
            | L1_ECX_POPCNT
            | L1_ECX_AES
            | L1_ECX_XSAVE
            | L1_ECX_OSXSAVE
            | L1_ECX_AVX
            | L1_ECX_F16C
            | L1_ECX_RDRAND);
    }
    // Leaf 7: every structured extension (AVX2, AVX-512, BMI, ADX, SHA, RDSEED, FSGSBASE,
    // SMAP's stac/clac, ...) is new instructions a guest kernel may use; clear them all but
    // keep the leaf so that its sub-leaf count stays valid.
    for e in entries.iter_mut().filter(|e| e.function == 7) {
        if e.index == 0 {
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        } else {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
    }
    if let Some(e) = leaf_mut(entries, 0x8000_0001, 0) {
        e.ecx &= !(E1_ECX_ABM
            | E1_ECX_SSE4A
            | E1_ECX_MISALIGNSSE
            | E1_ECX_XOP
            | E1_ECX_FMA4
            | E1_ECX_TBM);
    }
}

fn normalize_features(entries: &mut [kvm_cpuid_entry2], tsc_deadline: bool) {
    if let Some(e) = leaf_mut(entries, 1, 0) {
        e.ecx |= L1_ECX_HYPERVISOR;
        if tsc_deadline {
            e.ecx |= L1_ECX_TSC_DEADLINE;
        }
    }
}

/// Number of bits needed to hold values `0..count`.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

fn set_topology(entries: &mut Vec<kvm_cpuid_entry2>, index: u32, count: u32) {
    let apic_id = index;
    let core_bits = id_bits(count);
    if let Some(e) = leaf_mut(entries, 1, 0) {
        // EBX[31:24] initial APIC ID, EBX[23:16] addressable logical processors.
        let logical = count.clamp(1, 255);
        e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (logical << 16);
        if count > 1 {
            e.edx |= L1_EDX_HTT;
        } else {
            e.edx &= !L1_EDX_HTT;
        }
    }
    // Leaf 4 (Intel deterministic cache parameters): cores per package and sharing.
    for e in entries.iter_mut().filter(|e| e.function == 4) {
        let cache_level = (e.eax >> 5) & 0x7;
        let cores_minus_one = (1u32 << core_bits).saturating_sub(1).min(63);
        let sharing_minus_one = if cache_level >= 3 {
            (1u32 << core_bits).saturating_sub(1).min(0xfff)
        } else {
            0
        };
        e.eax = (e.eax & 0x3fff) | (sharing_minus_one << 14) | (cores_minus_one << 26);
    }
    // Leaves 0xB and 0x1F: the extended topology, SMT level (1 thread) then core level.
    for function in [0xb_u32, 0x1f] {
        let present = entries.iter().any(|e| e.function == function)
            || (function == 0xb && max_basic_leaf(entries) >= 0xb);
        entries.retain(|e| e.function != function);
        if !present {
            continue;
        }
        let levels = [
            (0u32, 1u32, 1u32), // (shift, logical count, level type): SMT
            (core_bits, count, 2),
            (0, 0, 0), // invalid level terminates the list
        ];
        for (sub, (shift, logical, kind)) in levels.into_iter().enumerate() {
            entries.push(kvm_cpuid_entry2 {
                function,
                index: sub as u32,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: logical & 0xffff,
                ecx: (sub as u32 & 0xff) | (kind << 8),
                edx: apic_id,
                ..Default::default()
            });
        }
    }
    // AMD: core count and APIC ID size in 0x8000_0008 ECX, extended APIC ID in 0x8000_001E.
    if !is_intel(entries) {
        if let Some(e) = leaf_mut(entries, 0x8000_0008, 0) {
            let nc = count.saturating_sub(1).min(0xff);
            e.ecx = (e.ecx & !0xf0ff) | nc | (core_bits.max(1) << 12);
        }
        if let Some(e) = leaf_mut(entries, 0x8000_001e, 0) {
            e.eax = apic_id;
            e.ebx = apic_id & 0xff; // one thread per core, core ID = APIC ID
            e.ecx = 0; // node 0, one node per processor
        }
    } else if let Some(e) = leaf_mut(entries, 0x8000_0008, 0) {
        e.ecx = 0; // reserved on Intel
    }
}

fn max_basic_leaf(entries: &[kvm_cpuid_entry2]) -> u32 {
    leaf(entries, 0, 0).map_or(0, |e| e.eax)
}

/// Makes sure the brand string leaves exist and hold a non-empty string.
fn ensure_brand(entries: &mut Vec<kvm_cpuid_entry2>) {
    let present = (0x8000_0002..=0x8000_0004u32)
        .all(|f| leaf(entries, f, 0).is_some_and(|e| e.eax | e.ebx | e.ecx | e.edx != 0));
    if present {
        return;
    }
    let mut bytes = [0u8; 48];
    bytes[..DEFAULT_BRAND.len()].copy_from_slice(DEFAULT_BRAND.as_bytes());
    for (i, function) in (0x8000_0002..=0x8000_0004u32).enumerate() {
        let word = |k: usize| {
            u32::from_le_bytes(
                bytes[i * 16 + k * 4..i * 16 + k * 4 + 4]
                    .try_into()
                    .unwrap(),
            )
        };
        entries.retain(|e| e.function != function);
        entries.push(kvm_cpuid_entry2 {
            function,
            eax: word(0),
            ebx: word(1),
            ecx: word(2),
            edx: word(3),
            ..Default::default()
        });
    }
    if let Some(e) = leaf_mut(entries, 0x8000_0000, 0) {
        e.eax = e.eax.max(0x8000_0004);
    }
}

/// Reads the brand string out of a CPUID list (for tests and `nodeinfo`).
pub fn brand_string(entries: &[kvm_cpuid_entry2]) -> String {
    let mut bytes = Vec::with_capacity(48);
    for function in 0x8000_0002..=0x8000_0004u32 {
        if let Some(e) = leaf(entries, function, 0) {
            for r in [e.eax, e.ebx, e.ecx, e.edx] {
                bytes.extend_from_slice(&r.to_le_bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn fake_host(vendor: &[u8; 12]) -> Vec<kvm_cpuid_entry2> {
        let w = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
        vec![
            entry(0, 0, [0x1f, w(0), w(8), w(4)]),
            entry(
                1,
                0,
                [0x806f8, 0x0000_0800, !L1_ECX_HYPERVISOR, 0x178b_fbff],
            ),
            entry(4, 0, [0x121, 0, 0, 0]),
            entry(4, 3, [0x163, 0, 0, 0]),
            entry(7, 0, [0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xd, 0, [0x7, 0x340, 0x340, 0]),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0xffff_ffff, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7, 0]),
        ]
    }

    #[test]
    fn topology_matches_vcpu_index_and_count() {
        let host = fake_host(b"AuthenticAMD");
        for count in [1u32, 2, 3, 4, 8] {
            for index in 0..count {
                let c = vcpu_cpuid(&host, CpuTemplate::Host, index, count, true);
                let l1 = leaf(&c, 1, 0).unwrap();
                assert_eq!(l1.ebx >> 24, index, "initial APIC ID");
                assert_eq!((l1.ebx >> 16) & 0xff, count);
                assert_eq!(l1.edx & L1_EDX_HTT != 0, count > 1);
                assert!(l1.ecx & L1_ECX_HYPERVISOR != 0);
                let smt = leaf(&c, 0xb, 0).unwrap();
                let core = leaf(&c, 0xb, 1).unwrap();
                let end = leaf(&c, 0xb, 2).unwrap();
                assert_eq!((smt.ebx, smt.ecx >> 8, smt.edx), (1, 1, index));
                assert_eq!((core.ebx, core.ecx >> 8, core.edx), (count, 2, index));
                assert!(1u32 << core.eax >= count, "shift covers all APIC IDs");
                assert_eq!(end.ecx >> 8, 0);
                // Leaf 0x1f was not offered by the host, so it is not invented.
                assert!(leaf(&c, 0x1f, 0).is_none());
                assert_eq!(leaf(&c, 0x8000_0008, 0).unwrap().ecx & 0xff, count - 1);
            }
        }
    }

    #[test]
    fn intel_cache_leaf_reports_cores_per_package() {
        let host = fake_host(b"GenuineIntel");
        let c = vcpu_cpuid(&host, CpuTemplate::Host, 0, 4, false);
        let l1d = leaf(&c, 4, 0).unwrap();
        let l3 = leaf(&c, 4, 3).unwrap();
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(l1d.eax & 0x3fff, 0x121, "cache type/level bits kept");
    }

    #[test]
    fn baseline_hides_what_emulating_hosts_cannot_run() {
        let host = fake_host(b"AuthenticAMD");
        let c = vcpu_cpuid(&host, CpuTemplate::Baseline, 0, 1, true);
        let l1 = leaf(&c, 1, 0).unwrap();
        for bit in [
            L1_ECX_CX16,
            L1_ECX_XSAVE,
            L1_ECX_OSXSAVE,
            L1_ECX_AVX,
            L1_ECX_POPCNT,
        ] {
            assert_eq!(l1.ecx & bit, 0, "bit {bit:#x}");
        }
        assert!(l1.ecx & 1 != 0, "SSE3 kept");
        let l7 = leaf(&c, 7, 0).unwrap();
        assert_eq!((l7.ebx, l7.ecx, l7.edx), (0, 0, 0));
        assert!(leaf(&c, 0xd, 0).is_none());
        assert_eq!(leaf(&c, 0x8000_0001, 0).unwrap().ecx & E1_ECX_ABM, 0);
        // The host template keeps them.
        let h = vcpu_cpuid(&host, CpuTemplate::Host, 0, 1, true);
        assert!(leaf(&h, 1, 0).unwrap().ecx & L1_ECX_POPCNT != 0);
    }

    #[test]
    fn brand_is_always_present() {
        let c = vcpu_cpuid(&fake_host(b"AuthenticAMD"), CpuTemplate::Host, 0, 1, false);
        assert_eq!(brand_string(&c), DEFAULT_BRAND);
        assert!(leaf(&c, 0x8000_0000, 0).unwrap().eax >= 0x8000_0004);
    }

    #[test]
    fn template_names_parse() {
        assert_eq!("baseline".parse::<CpuTemplate>(), Ok(CpuTemplate::Baseline));
        assert!("fancy"
            .parse::<CpuTemplate>()
            .unwrap_err()
            .contains("unknown CPU template"));
    }
}
