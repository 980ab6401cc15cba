//! KVM VM and vCPU state.
