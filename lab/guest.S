/*
 * The lab guest: a 32-bit multiboot kernel that fills guest RAM from 2 MiB to 98 MiB with a
 * 32-byte marker, says so on COM1, then rewrites a 1 MiB window above the fill forever, so
 * that a live migration always has dirty pages to send, and repeats "filled" now and then. A capture of the migration stream
 * shows whether guest memory crossed the wire in clear: count the marker in it.
 *
 * Built at run time by lab/guest.py:  as --32 guest.S && ld -m elf_i386 -N -Ttext 0x100000
 * The marker must stay equal to MARKER in lab/guest.py (the build checks it).
 */
        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0                /* an ELF image: QEMU reads the load addresses from it */
        .set FILL_START, 0x00200000     /* 2 MiB, above the kernel and the multiboot info */
        .set FILL_END, 0x06200000       /* 98 MiB */
        .set WINDOW_DWORDS, 0x40000     /* 1 MiB, right after the fill */
        .set COM1, 0x3f8

        .macro puts msg
        mov $\msg, %esi
        mov $COM1, %dx
1:      lodsb
        test %al, %al
        jz 2f
        outb %al, %dx
        jmp 1b
2:
        .endm

        .text
        .code32
        .align 4
        .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

        .globl _start
_start:
        cli
        cld
        puts booted

        mov $FILL_START, %edi
fill:   mov $marker, %esi
        mov $8, %ecx                    /* 8 dwords = the 32-byte marker */
        rep movsl
        cmp $FILL_END, %edi
        jb fill

        puts filled

        /* "filled" again every 2^30 TSC ticks (a fraction of a second): after a migration
           the destination's serial log shows that the guest runs there, RAM still full. */
        xor %ebx, %ebx                  /* a new value each pass: the pages really change */
        xor %ebp, %ebp
dirty:  mov %ebx, %eax
        mov $FILL_END, %edi
        mov $WINDOW_DWORDS, %ecx
        rep stosl
        inc %ebx
        rdtsc
        shrd $30, %edx, %eax
        cmp %eax, %ebp
        je dirty
        mov %eax, %ebp
        puts filled
        jmp dirty

        .data
marker: .ascii "KVMLAB-GUEST-RAM-MARKER-7f3a9c1e"
booted: .asciz "kvmlab guest: booted\n"
filled: .asciz "kvmlab guest: filled\n"
