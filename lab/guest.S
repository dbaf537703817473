/*
 * The lab guest as a 32-bit multiboot kernel: QEMU's multiboot loader (<os><kernel>) starts
 * it in protected mode with flat segments, and it runs the RAM filler of guest_fill.inc
 * (the marker in 2-98 MiB, a dirtied window, "filled" on COM1). A capture of a migration
 * shows whether guest memory crossed the wire in clear: count the marker in it.
 *
 * Built at run time by lab/guest.py:  as --32 -I lab guest.S && ld -m elf_i386 -N -Ttext 0x100000
 */
        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0                /* an ELF image: QEMU reads the load addresses from it */

        .text
        .code32
        .align 4
        .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

        .globl _start
_start:
        cli
        .include "guest_fill.inc"
