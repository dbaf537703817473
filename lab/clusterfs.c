/*
 * An LD_PRELOAD shim for the lab's libvirtd only: statfs() and fstatfs() report a GFS2
 * filesystem (a cluster filesystem for libvirt) for the paths under the directories named
 * in $KVMLAB_CLUSTER_FS (colon-separated), and pass everything else through unchanged.
 *
 * Why: libvirt 9.0 refuses to live-migrate a VM whose disk is on a local filesystem
 * ("Migration without shared storage is unsafe"; qemuMigrationSrcIsSafe asks
 * virFileIsSharedFS / virFileIsClusterFS, which read statfs's f_type) and has no
 * shared_filesystems setting. The lab's shared pool is a bind mount of one directory, as
 * safe as a cluster filesystem, but ext4 by its type. Sizes and every other field stay
 * the real ones. The shim takes its list at load time and removes itself and the list from
 * the environment: libvirt passes LD_PRELOAD on to the QEMUs it starts, which must run as
 * they would without the lab.
 *
 * Built at run time by lab/clusterfs.py (gcc -shared -fPIC); never part of the product.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#define CLUSTER_FS_MAGIC 0x01161970 /* GFS2_MAGIC */
#define LIST_VAR "KVMLAB_CLUSTER_FS"

static char paths[8192]; /* the directories, colon-separated; empty: none */

__attribute__((constructor)) static void take_list(void)
{
    const char *list = getenv(LIST_VAR);

    if (list != NULL && strlen(list) < sizeof(paths))
        strcpy(paths, list);
    else if (list != NULL)
        fprintf(stderr, "kvmlab clusterfs: %s too long, ignored\n", LIST_VAR);
    unsetenv("LD_PRELOAD");
    unsetenv(LIST_VAR);
}

/* Whether `path` is one of the listed directories or lies below one. */
static int listed(const char *path)
{
    const char *list = paths;
    char real[PATH_MAX];
    const char *p;

    if (*list == '\0' || path == NULL)
        return 0;
    p = realpath(path, real) != NULL ? real : path;
    while (*list != '\0') {
        size_t n = strcspn(list, ":");
        if (n > 0 && strncmp(p, list, n) == 0 && (p[n] == '\0' || p[n] == '/'))
            return 1;
        list += n;
        if (*list == ':')
            list++;
    }
    return 0;
}

static int fd_listed(int fd)
{
    char link[64], path[PATH_MAX];
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    return listed(path);
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

int statfs(const char *path, struct statfs *buf)
{
    int rc = NEXT(statfs)(path, buf);
    if (rc == 0 && listed(path))
        buf->f_type = CLUSTER_FS_MAGIC;
    return rc;
}

int statfs64(const char *path, struct statfs64 *buf)
{
    int rc = NEXT(statfs64)(path, buf);
    if (rc == 0 && listed(path))
        buf->f_type = CLUSTER_FS_MAGIC;
    return rc;
}

int fstatfs(int fd, struct statfs *buf)
{
    int rc = NEXT(fstatfs)(fd, buf);
    if (rc == 0 && fd_listed(fd))
        buf->f_type = CLUSTER_FS_MAGIC;
    return rc;
}

int fstatfs64(int fd, struct statfs64 *buf)
{
    int rc = NEXT(fstatfs64)(fd, buf);
    if (rc == 0 && fd_listed(fd))
        buf->f_type = CLUSTER_FS_MAGIC;
    return rc;
}
