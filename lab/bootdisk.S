/*
 * The lab guest on a disk: a BIOS boot sector that reads the rest of the program from the
 * disk (int 13h, extended read), switches to 32-bit protected mode and runs the RAM filler
 * of guest_fill.inc, the same as the multiboot kernel of guest.S.
 *
 * Disk layout (lab/bootdisk.py adds the data after the program):
 *   sector 0                  this boot sector (0x55AA at byte 510), loaded at 0x7C00
 *   sectors 1..PROGRAM_SECTORS the 32-bit program, read to 0x7E00
 *   then                      sectors full of markers (data only, never loaded)
 *
 * Built at run time by lab/bootdisk.py:
 *   as --32 -I lab bootdisk.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary
 */
        .set PROGRAM_SECTORS, 8         /* 4 KiB read after the boot sector */
        .set LOAD_ADDRESS, 0x7e00
        .set CODE_SELECTOR, 0x08
        .set DATA_SELECTOR, 0x10

        .text
        .code16
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0x7c00, %sp
        ljmp $0, $start16               /* some BIOSes jump to 07C0:0000: make CS 0 */
start16:
        sti                             /* the BIOS disk services may wait on interrupts */
        mov $dap, %si                   /* DL still names the boot drive, as the BIOS set it */
        mov $0x42, %ah
        int $0x13
        jc disk_error
        cli

        in $0x92, %al                   /* fast A20: the fill lies above 1 MiB */
        or $2, %al
        and $0xfe, %al
        out %al, $0x92

        lgdtl gdt_descriptor
        mov %cr0, %eax
        or $1, %eax
        mov %eax, %cr0
        ljmp $CODE_SELECTOR, $start32

disk_error:
        mov $read_failed, %si
        mov $0x3f8, %dx
1:      lodsb
        test %al, %al
        jz 2f
        outb %al, %dx
        jmp 1b
2:      cli
        hlt
        jmp 2b

        .balign 4
dap:    .byte 16, 0                     /* int 13h AH=42h disk address packet */
        .word PROGRAM_SECTORS
        .word LOAD_ADDRESS, 0           /* offset, segment */
        .quad 1                         /* first LBA */
gdt:    .quad 0
        .quad 0x00cf9a000000ffff        /* code: base 0, limit 4 GiB, 32-bit */
        .quad 0x00cf92000000ffff        /* data: base 0, limit 4 GiB */
gdt_descriptor:
        .word gdt_descriptor - gdt - 1
        .long gdt
read_failed:
        .asciz "kvmlab guest: disk read failed\n"

        .org 510
        .word 0xaa55

        .code32
start32:                                /* at LOAD_ADDRESS */
        mov $DATA_SELECTOR, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov $0x7c00, %esp
        .include "guest_fill.inc"

        .org 512 * (1 + PROGRAM_SECTORS)  /* an error here: the program outgrew its sectors */
