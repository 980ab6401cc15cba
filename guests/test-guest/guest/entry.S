/*
 * vireo test guest: the CPL0 part.
 *
 * PVH entry (32-bit protected mode, paging off, EBX = hvm_start_info)
 *   -> identity page tables (first 4 GiB, U/S=1) -> long mode
 *   -> GDT/TSS/IDTR -> iretq to CPL3 with IOPL=3, where all checks run.
 *
 * Everything here runs at CPL0, which is emulated instruction by
 * instruction on the PVM host, so it is kept deliberately tiny: no loops
 * except the 2 MiB-page fallback, no SSE, no rep-prefixed instructions,
 * no int3/popcnt/cmpxchg16b/xsave.
 *
 * Written from the PVH boot ABI (hvm_start_info) and the Intel SDM.
 */

#define SEL_KCODE   0x08
#define SEL_KDATA   0x10
#define SEL_UDATA   0x1b    /* GDT index 3, RPL 3 */
#define SEL_UCODE   0x23    /* GDT index 4, RPL 3 */
#define SEL_TSS     0x28
#define SEL_KCODE32 0x38    /* 32-bit code, for the Linux 64-bit entry's way back */

#define PTE_P   0x001
#define PTE_RW  0x002
#define PTE_US  0x004
#define PTE_PWT 0x008
#define PTE_PCD 0x010
#define PTE_PS  0x080

/* ---------------------------------------------------------------------- */
/* PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen".               */
/* The descriptor is 8 bytes (like an ELF64 Linux kernel); readers that   */
/* take only 4 bytes get the same (little-endian) address.                */
/* ---------------------------------------------------------------------- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz */
    .long 8                 /* descsz */
    .long 18                /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_entry
    .balign 4

/* ---------------------------------------------------------------------- */
/* Linux 64-bit boot protocol entry (bzImage, or an ELF without the PVH     */
/* note): 0x200 bytes into the image, in long mode with the VMM's identity  */
/* map, RSI = zero page (struct boot_params). Converts the zero page into   */
/* an hvm_start_info at 0x5000, drops to 32-bit protected mode with paging  */
/* off, and continues on the PVH path: one set of checks for both entries.  */
/* ---------------------------------------------------------------------- */
#define BOOT_INFO 0x5000
    .section .text.head, "ax"
    .code64
    .fill 0x200, 1, 0xcc
    .globl linux64_entry
linux64_entry:
    movw $0x3f8, %dx                /* '@' first, as on the PVH path */
    movb $'@', %al
    outb %al, %dx
    movl $BOOT_INFO, %edi
    movl $0x336ec578, (%rdi)        /* magic */
    movl $1, 4(%rdi)                /* version */
    movq $0, 8(%rdi)                /* flags, nr_modules */
    movq $0, 16(%rdi)               /* modlist_paddr */
    movl 0x228(%rsi), %eax          /* hdr.cmd_line_ptr */
    movq %rax, 24(%rdi)
    movq 0x70(%rsi), %rax           /* acpi_rsdp_addr */
    movq %rax, 32(%rdi)
    leaq 0x40(%rdi), %rdx           /* memmap right after */
    movq %rdx, 40(%rdi)
    movl $1, vtg_linux64_entry(%rip)
    movl 0x21c(%rsi), %eax          /* hdr.ramdisk_size: the initrd becomes module 0 */
    testl %eax, %eax
    jz 4f
    movl $1, 12(%rdi)               /* nr_modules */
    leaq 0x800(%rdi), %r8
    movq %r8, 16(%rdi)              /* modlist_paddr */
    movq %rax, 8(%r8)               /* size */
    movl 0x218(%rsi), %eax          /* hdr.ramdisk_image */
    movq %rax, (%r8)                /* paddr */
    movq $0, 16(%r8)
    movq $0, 24(%r8)
4:  movzbl 0x1e8(%rsi), %ecx        /* e820_entries */
    movq %rcx, 48(%rdi)             /* memmap_entries, reserved */
    addq $0x2d0, %rsi               /* e820_table: {addr, size, u32 type}, 20 bytes */
1:  testl %ecx, %ecx
    jz 2f
    movq (%rsi), %rax
    movq %rax, (%rdx)
    movq 8(%rsi), %rax
    movq %rax, 8(%rdx)
    movl 16(%rsi), %eax
    movq %rax, 16(%rdx)             /* type, reserved = 0 */
    addq $20, %rsi
    addq $24, %rdx
    decl %ecx
    jmp 1b
2:  lgdt gdt_ptr(%rip)              /* has a 32-bit code segment at 0x38 */
    pushq $SEL_KCODE32
    leaq 3f(%rip), %rax
    pushq %rax
    lretq
    .code32
3:  movl %cr0, %eax                 /* paging off: leaves long mode */
    andl $0x7fffffff, %eax
    movl %eax, %cr0
    movl $0xc0000080, %ecx          /* EFER.LME off */
    rdmsr
    andl $~0x100, %eax
    wrmsr
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $BOOT_INFO, %ebx
    jmp pvh_after_marker

/* ---------------------------------------------------------------------- */
    .section .text.entry, "ax"
    .code32
    .globl pvh_entry
pvh_entry:
    /* The very first thing: '@' to COM1, no LSR poll (boot benchmark). */
    movw $0x3f8, %dx
    movb $'@', %al
    outb %al, %dx
pvh_after_marker:
    movl %ebx, %edi                 /* hvm_start_info; survives to CPL3 */

    /* 1 GiB pages available? (CPUID 0x80000001 EDX bit 26) */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb 2f
    movl $0x80000001, %eax
    cpuid
    btl $26, %edx
    jnc 2f

    /* 4 x 1 GiB pages; the last GiB (IOAPIC/LAPIC/flash) uncached. */
    movl $(PTE_P|PTE_RW|PTE_US|PTE_PS), pdpt
    movl $(0x40000000|PTE_P|PTE_RW|PTE_US|PTE_PS), pdpt+8
    movl $(0x80000000|PTE_P|PTE_RW|PTE_US|PTE_PS), pdpt+16
    movl $(0xc0000000|PTE_P|PTE_RW|PTE_US|PTE_PS|PTE_PCD|PTE_PWT), pdpt+24
    movl $1, pgmode_1g
    jmp 3f

2:  /* Fallback: 2048 x 2 MiB pages in pd0..pd3 (contiguous). */
    movl $(pd0+PTE_P+PTE_RW+PTE_US), pdpt
    movl $(pd0+0x1000+PTE_P+PTE_RW+PTE_US), pdpt+8
    movl $(pd0+0x2000+PTE_P+PTE_RW+PTE_US), pdpt+16
    movl $(pd0+0x3000+PTE_P+PTE_RW+PTE_US), pdpt+24
    movl $pd0, %esi
    movl $(PTE_P|PTE_RW|PTE_US|PTE_PS), %eax
    movl $2048, %ecx
1:  movl %eax, (%esi)
    addl $0x200000, %eax
    addl $8, %esi
    decl %ecx
    jnz 1b
    /* IOAPIC (0xfec00000) and LAPIC (0xfee00000) 2 MiB pages uncached */
    orl $(PTE_PCD|PTE_PWT), pd0+(0xfec00000>>21)*8
    orl $(PTE_PCD|PTE_PWT), pd0+(0xfee00000>>21)*8

3:  movl $(pdpt+PTE_P+PTE_RW+PTE_US), pml4

    lgdt gdt_ptr
    movl %cr4, %eax
    orl $0x20, %eax                 /* PAE */
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx          /* EFER */
    rdmsr
    orl $0x101, %eax                /* LME | SCE (syscall/sysret) */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* PG | PE */
    movl %eax, %cr0
    ljmp $SEL_KCODE, $long_entry

    .code64
long_entry:
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    leaq kstack_top(%rip), %rsp

    /* TSS descriptor base (the TSS lives below 4 GiB). */
    leaq tss(%rip), %rax
    movw %ax, gdt_tss+2(%rip)
    shrl $16, %eax
    movb %al, gdt_tss+4(%rip)
    movb %ah, gdt_tss+7(%rip)
    movl $SEL_TSS, %eax
    ltr %ax
    lidt idt_ptr(%rip)

    /* syscall gate: STAR selectors (kernel CS 0x08/SS 0x10; sysret CS 0x23/SS 0x1b),
     * LSTAR entry, FMASK clears IF/TF/DF on entry. */
    movl $0xc0000081, %ecx
    xorl %eax, %eax
    movl $((0x10 << 16) | 0x08), %edx
    wrmsr
    movl $0xc0000082, %ecx
    leaq vtg_syscall(%rip), %rax
    xorl %edx, %edx
    wrmsr
    movl $0xc0000084, %ecx
    movl $0x700, %eax
    wrmsr

    /* Drop to CPL3: IOPL=3, IF=0 (CPL3 asks for IF=1 via the syscall gate). */
    movl %edi, %edi                 /* start_info, zero-extended -> arg 0 */
    pushq $SEL_UDATA
    leaq ustack_top-8(%rip), %rax   /* -8: ABI alignment at function entry */
    pushq %rax
    pushq $0x3002
    pushq $SEL_UCODE
    leaq vtg_main(%rip), %rax
    pushq %rax
    iretq

/* ---------------------------------------------------------------------- */
/* Interrupt/exception stubs (CPL0).                                      */
/* ---------------------------------------------------------------------- */
    .text
    .code64

    .macro EXC vec, haserr
    .globl vtg_exc\vec
vtg_exc\vec:
    .if \haserr == 0
    pushq $0
    .endif
    pushq $\vec
    jmp exc_common
    .endm

    EXC 0,0
    EXC 1,0
    EXC 2,0
    EXC 3,0
    EXC 4,0
    EXC 5,0
    EXC 6,0
    EXC 7,0
    EXC 8,1
    EXC 9,0
    EXC 10,1
    EXC 11,1
    EXC 12,1
    EXC 13,1
    EXC 14,1
    EXC 15,0
    EXC 16,0
    EXC 17,1
    EXC 18,0
    EXC 19,0
    EXC 20,0
    EXC 21,1

/*
 * Stack: vec, err, rip, cs, rflags, rsp, ss.
 * A fault at CPL3 is reflected back to CPL3: the iret frame is rewritten
 * to enter vtg_exception(vec, err, rip, cr2) on its own stack.
 * A fault at CPL0 prints '!' and stops.
 */
exc_common:
    testb $3, 24(%rsp)
    jz 1f
    popq %rdi
    popq %rsi
    movq (%rsp), %rdx
    movq %cr2, %rcx
    leaq vtg_exception(%rip), %rax
    movq %rax, (%rsp)
    leaq xstack_top-8(%rip), %rax
    movq %rax, 24(%rsp)
    iretq
1:  movw $0x3f8, %dx
    movb $'!', %al
    outb %al, %dx
2:  cli
    hlt
    jmp 2b

/* PIT tick (IRQ0 -> vector 0x20): count, EOI. */
    .globl vtg_irq0
vtg_irq0:
    incq vtg_ticks(%rip)
    pushq %rax
    movb $0x20, %al
    outb %al, $0x20
    popq %rax
    iretq

/* Local APIC timer (vector 0x30): count, EOI to the LAPIC (xAPIC MMIO). */
    .globl vtg_irq_lapic
vtg_irq_lapic:
    incq vtg_ticks(%rip)
    pushq %rax
    movl $0xfee000b0, %eax
    movl $0, (%rax)
    popq %rax
    iretq

/* COM1 (IRQ4 -> vector 0x24): count, EOI to the master 8259. */
    .globl vtg_irq_com1
vtg_irq_com1:
    incq vtg_serial_irqs(%rip)
    pushq %rax
    movb $0x20, %al
    outb %al, $0x20
    popq %rax
    iretq

/* Other master-PIC IRQs (0x21..0x27). */
    .globl vtg_irq_master
vtg_irq_master:
    pushq %rax
    movb $0x20, %al
    outb %al, $0x20
    popq %rax
    iretq

/* Slave-PIC IRQs (0x28..0x2f). */
    .globl vtg_irq_slave
vtg_irq_slave:
    pushq %rax
    movb $0x20, %al
    outb %al, $0xa0
    outb %al, $0x20
    popq %rax
    iretq

/* Anything else (e.g. LAPIC spurious). */
    .globl vtg_irq_ignore
vtg_irq_ignore:
    iretq

/*
 * The CPL0 gate, entered from CPL3 with `ud2` followed by the bytes "VG" (#UD, vector 6).
 * Function number in EDI -- not EAX: some nested hosts clobber RAX around port-I/O exits --
 * dispatched
 * through a table so each call costs a handful of instructions: CPL0 code is emulated
 * instruction by instruction on some hosts.
 *   0: halt forever, interrupts on   1: halt forever, interrupts off
 *   2: triple fault                  3: return with IF=1
 *   4: return with IF=0
 *   5: outb  6: outw  7: outl   (EDX = port, ESI = value)
 *   8: inb   9: inw  10: inl    (EDX = port; value returned in EAX)
 *  11: cpuid (ESI = leaf, ECX = sub-leaf; returns EAX, EBX, ECX, EDX)
 *  12: open a short interrupt window (sti, spin, cli); clobbers ECX
 *  13: wrmsr (ESI = MSR index, RDX = 64-bit value)
 *  14: popcnt at CPL0 (hosts that emulate CPL0 may fail it: tests the VMM's report)
 *  15: sleep until the next interrupt (sti; hlt), then return with IF=0
 * Port I/O and CPUID live here because a host may run guest user mode as real user mode:
 * then IOPL=3 is not honoured (in/out fault) and CPUID reports the host's CPU. `syscall`
 * rather than `int $0x80` because such hosts forward exactly the transitions a Linux
 * guest uses (int $0x80 from user mode arrives as #UD there).
 */
    .globl vtg_syscall
vtg_syscall:
    movq (%rsp), %r11               /* a gate call is `ud2` followed by the bytes "VG" */
    cmpl $0x47560b0f, (%r11)
    jne vtg_exc6                    /* a genuine #UD: report it */
    addq $4, (%rsp)
    cmpl $16, %edi
    jae 99f
    jmp *sys_table(,%rdi,8)
99: iretq
10: sti
1:  hlt
    jmp 1b
11: cli
2:  hlt
    jmp 2b
12: lidt idt_zero(%rip)
    ud2
    jmp 12b
13: orq $0x200, 16(%rsp)
    iretq
14: andq $~0x200, 16(%rsp)
    iretq
15: movl %esi, %eax
    outb %al, %dx
    iretq
16: movl %esi, %eax
    outw %ax, %dx
    iretq
17: movl %esi, %eax
    outl %eax, %dx
    iretq
18: xorl %eax, %eax
    inb %dx, %al
    iretq
19: xorl %eax, %eax
    inw %dx, %ax
    iretq
20: inl %dx, %eax
    iretq
21: movl %esi, %eax
    cpuid
    iretq
22: sti                             /* a short window for pending interrupts */
    movl $100, %ecx
3:  decl %ecx
    jnz 3b
    cli
    iretq
23: movl %esi, %ecx
    movl %edx, %eax
    shrq $32, %rdx
    wrmsr
    iretq
24: popcntq %rsi, %rax
    iretq
25: sti                             /* sti's one-instruction shadow: no wakeup is lost */
    hlt
    cli
    iretq

    .section .rodata
    .balign 8
sys_table:
    .quad 10b, 11b, 12b, 13b, 14b, 15b, 16b, 17b, 18b, 19b, 20b, 21b, 22b, 23b, 24b, 25b
    .text

/* ---------------------------------------------------------------------- */
/* AP trampoline (real mode), copied by CPL3 to 0x3000, SIPI vector 3.    */
/* Marks its initial APIC ID in the bitmap at 0x3f00 and halts.           */
/* ---------------------------------------------------------------------- */
    .section .rodata
    .globl vtg_ap_tramp_start, vtg_ap_tramp_end
    .code16
vtg_ap_tramp_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    lock btsl %ebx, 0x3f00
1:  cli
    hlt
    jmp 1b
vtg_ap_tramp_end:
    .code64

/* ---------------------------------------------------------------------- */
    .data
    .balign 16
    .globl vtg_linux64_entry
vtg_linux64_entry:                  /* 1 when entered through the Linux 64-bit protocol */
    .long 0
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00cff2000000ffff        /* 0x18 user data, DPL3 */
    .quad 0x00affa000000ffff        /* 0x20 user code, 64-bit, DPL3 */
gdt_tss:                            /* 0x28 64-bit TSS (base patched) */
    .word 0x67, 0
    .byte 0, 0x89, 0, 0
    .long 0, 0
    .quad 0x00cf9a000000ffff        /* 0x38 kernel code, 32-bit */
gdt_end:

    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 8
idt_ptr:
    .word 256*16 - 1
    .quad vtg_idt
    .balign 8
idt_zero:
    .word 0
    .quad 0

    .balign 16
tss:
    .long 0
    .quad kstack_top                /* RSP0 */
    .fill 0x68 - 12, 1, 0

    .globl pgmode_1g
    .balign 4
pgmode_1g:
    .long 0

/*
 * Page tables and IDT live in a loaded (PROGBITS) section so that they
 * are zero again after every reload of the image (e.g. a guest reset
 * where the VMM does not clear RAM). CPL3 may write them (U/S=1).
 */
    .section .pgtables, "aw", @progbits
    .balign 4096
    .globl pml4, pdpt, pd0, vtg_pd_win, vtg_idt
pml4:       .fill 4096, 1, 0
pdpt:       .fill 4096, 1, 0
pd0:        .fill 4*4096, 1, 0
vtg_pd_win: .fill 4096, 1, 0
vtg_idt:    .fill 4096, 1, 0

    .section .stacks, "aw", @nobits
    .balign 4096
    .skip 8192
kstack_top:
    .skip 8192
xstack_top:
    .skip 65536
ustack_top:
