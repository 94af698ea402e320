/* Batch driver of ddrom UMAT plugins: one foreign call from Python integrates a whole
 * block of points; the per-point loop runs here in compiled code. Also the Abaqus utility
 * routines a UMAT may call (XIT, STDB_ABQERR, ROTSIG, SINV, SPRINC, SPRIND). See ddrom_umat.h. */
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include "ddrom_umat.h"

int ddrom_umat_abi_version(void) { return DDROM_UMAT_ABI_VERSION; }

/* ------------------------------------------------------------------ messages */
#define MSG_CAP 16384
/* Per thread: ddrom calls a plugin from one thread at a time, but a host program may not. */
static _Thread_local char msg_buf[MSG_CAP];
static _Thread_local size_t msg_len;
static _Thread_local int msg_dropped, msg_errors;
static _Thread_local int cur_noel, cur_npt, in_batch;
static _Thread_local jmp_buf *exit_target;

static void msg_reset(void)
{
    msg_len = 0;
    msg_buf[0] = '\0';
    msg_dropped = msg_errors = 0;
}

static void msg_add(const char *kind, const char *text, size_t len)
{
    char head[96];
    int h = in_batch ? snprintf(head, sizeof head, "%s: (element %d, point %d) ", kind, cur_noel, cur_npt)
                     : snprintf(head, sizeof head, "%s: ", kind);
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\0')) --len;   /* Fortran blank padding */
    if (h < 0 || msg_len + (size_t)h + len + 2 > MSG_CAP) {
        ++msg_dropped;
        return;
    }
    memcpy(msg_buf + msg_len, head, (size_t)h);
    msg_len += (size_t)h;
    memcpy(msg_buf + msg_len, text, len);
    msg_len += len;
    msg_buf[msg_len++] = '\n';
    msg_buf[msg_len] = '\0';
}

int ddrom_umat_messages(char *buf, int size)
{
    char tail[64] = "";
    if (msg_dropped) snprintf(tail, sizeof tail, "... %d more message(s)\n", msg_dropped);
    size_t total = msg_len + strlen(tail);
    if (buf && size > 0) {
        size_t n = total < (size_t)size - 1 ? total : (size_t)size - 1;
        size_t a = n < msg_len ? n : msg_len;
        memcpy(buf, msg_buf, a);
        memcpy(buf + a, tail, n - a);
        buf[n] = '\0';
    }
    return (int)total;
}

/* ------------------------------------------------------------------ XIT, STDB_ABQERR */
void xit_(void)
{
    static const char text[] = "the UMAT called XIT (stop the analysis)";
    msg_add("error", text, sizeof text - 1);
    if (exit_target) longjmp(*exit_target, 1);
    /* outside a batch there is nothing to return to: never exit the host process */
}

void stdb_abqerr_(const int *lop, const char *string, const int *intv, const double *realv, const char *charv,
                  size_t string_len, size_t charv_len)
{
    char out[1024];
    size_t o = 0;
    int ni = 0, nr = 0, ns = 0;
    for (size_t i = 0; i < string_len && o < sizeof out - 64; ++i) {
        if (string[i] == '%' && i + 1 < string_len) {
            char c = string[i + 1];
            if ((c == 'I' || c == 'i') && intv) { o += (size_t)snprintf(out + o, sizeof out - o, "%d", intv[ni++]); ++i; continue; }
            if ((c == 'R' || c == 'r') && realv) { o += (size_t)snprintf(out + o, sizeof out - o, "%.8g", realv[nr++]); ++i; continue; }
            if ((c == 'S' || c == 's') && charv) {
                size_t w = charv_len ? charv_len : 8, n = w;
                const char *s = charv + w * (size_t)ns++;
                while (n > 0 && s[n - 1] == ' ') --n;
                if (n > sizeof out - o - 64) n = sizeof out - o - 64;
                memcpy(out + o, s, n);
                o += n;
                ++i;
                continue;
            }
        }
        out[o++] = string[i];
    }
    int l = lop ? *lop : -1;
    const char *kind = l == 1 ? "info" : l == -1 ? "warning" : "error";
    msg_add(kind, out, o);
    if (l == -2 || l == -3) ++msg_errors;
    if (l == -3 && exit_target) longjmp(*exit_target, 1);
}

/* ------------------------------------------------------------------ tensors */
static const int SHEAR[3][2] = {{0, 1}, {0, 2}, {1, 2}};      /* Abaqus order 12, 13, 23 */

static void to_matrix(const double *s, int ndi, int nshr, int lstr, double a[3][3])
{
    memset(a, 0, 9 * sizeof(double));
    for (int i = 0; i < ndi && i < 3; ++i) a[i][i] = s[i];
    for (int j = 0; j < nshr && j < 3; ++j) {
        double v = lstr == 2 ? 0.5 * s[ndi + j] : s[ndi + j];
        a[SHEAR[j][0]][SHEAR[j][1]] = a[SHEAR[j][1]][SHEAR[j][0]] = v;
    }
}

void rotsig_(const double *s, const double *r, double *sprime, const int *lstr, const int *ndi, const int *nshr)
{
    double a[3][3], R[3][3], t[3][3], b[3][3];
    to_matrix(s, *ndi, *nshr, *lstr, a);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) R[i][j] = r[i + 3 * j];              /* R(I, J), column-major */
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            t[i][j] = 0;
            for (int k = 0; k < 3; ++k) t[i][j] += R[i][k] * a[k][j];
        }
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            b[i][j] = 0;
            for (int k = 0; k < 3; ++k) b[i][j] += t[i][k] * R[j][k];
        }
    for (int i = 0; i < *ndi && i < 3; ++i) sprime[i] = b[i][i];
    for (int j = 0; j < *nshr && j < 3; ++j) {
        double v = b[SHEAR[j][0]][SHEAR[j][1]];
        sprime[*ndi + j] = *lstr == 2 ? 2.0 * v : v;
    }
}

void sinv_(const double *stress, double *sinv1, double *sinv2, const int *ndi, const int *nshr)
{
    double a[3][3];
    to_matrix(stress, *ndi, *nshr, 1, a);
    double m = (a[0][0] + a[1][1] + a[2][2]) / 3.0, ss = 0;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            double d = a[i][j] - (i == j ? m : 0.0);
            ss += d * d;
        }
    *sinv1 = m;
    *sinv2 = sqrt(1.5 * ss);
}

/* Eigenvalues (ascending) and unit eigenvectors (columns of v) of a symmetric 3x3: cyclic Jacobi. */
static void eig3(double a[3][3], double w[3], double v[3][3])
{
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) v[i][j] = i == j;
    for (int sweep = 0; sweep < 50; ++sweep) {
        double off = fabs(a[0][1]) + fabs(a[0][2]) + fabs(a[1][2]);
        double scale = fabs(a[0][0]) + fabs(a[1][1]) + fabs(a[2][2]) + off;
        if (off <= 1e-15 * scale || off == 0.0) break;
        for (int p = 0; p < 2; ++p)
            for (int q = p + 1; q < 3; ++q) {
                if (a[p][q] == 0.0) continue;
                double theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < 3; ++k) {                 /* A <- A J */
                    double akp = a[k][p], akq = a[k][q];
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for (int k = 0; k < 3; ++k) {                 /* A <- J^T A */
                    double apk = a[p][k], aqk = a[q][k];
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for (int k = 0; k < 3; ++k) {                 /* V <- V J */
                    double vkp = v[k][p], vkq = v[k][q];
                    v[k][p] = c * vkp - s * vkq;
                    v[k][q] = s * vkp + c * vkq;
                }
            }
    }
    int idx[3] = {0, 1, 2};
    for (int i = 0; i < 2; ++i)
        for (int j = i + 1; j < 3; ++j)
            if (a[idx[j]][idx[j]] < a[idx[i]][idx[i]]) { int t = idx[i]; idx[i] = idx[j]; idx[j] = t; }
    double vs[3][3];
    for (int i = 0; i < 3; ++i) {
        w[i] = a[idx[i]][idx[i]];
        for (int k = 0; k < 3; ++k) vs[k][i] = v[k][idx[i]];
    }
    memcpy(v, vs, sizeof vs);
}

void sprinc_(const double *s, double *ps, const int *lstr, const int *ndi, const int *nshr)
{
    double a[3][3], v[3][3];
    to_matrix(s, *ndi, *nshr, *lstr, a);
    eig3(a, ps, v);
}

void sprind_(const double *s, double *ps, double *an, const int *lstr, const int *ndi, const int *nshr)
{
    double a[3][3], v[3][3];
    to_matrix(s, *ndi, *nshr, *lstr, a);
    eig3(a, ps, v);
    for (int k = 0; k < 3; ++k)
        for (int i = 0; i < 3; ++i) an[k + 3 * i] = v[i][k];       /* AN(K, I) = I-th component of direction K */
}

/* ------------------------------------------------------------------ the batch */
int ddrom_umat_batch(int n, const double *stran, const double *dstran, double *stress, double *statev,
                     int nstatv, double *ddsdde, const double *props, int nprops, const double *temp,
                     const double *dtemp, const double *predef, const double *dpred, int npredf,
                     const double *time, double dtime, const double *coords, const int *noel, const int *npt,
                     const double *celent, int kstep, int kinc, const char *cmname, double *pnewdt, int *info)
{
    msg_reset();
    if (info) *info = 0;
    if (pnewdt) *pnewdt = 1e36;
    if (n < 0 || nstatv < 0 || nprops < 0 || npredf < 0 || !info || !pnewdt || !time) return DDROM_UMAT_EBADARG;
    if (n > 0 && (!stran || !dstran || !stress || !ddsdde || !temp || !dtemp)) return DDROM_UMAT_EBADARG;
    if ((n > 0 && nstatv > 0 && !statev) || (nprops > 0 && !props)) return DDROM_UMAT_EBADARG;
    if (n > 0 && npredf > 0 && (!predef || !dpred)) return DDROM_UMAT_EBADARG;

    /* Abaqus passes CHARACTER*80 CMNAME, blank padded (no NUL) */
    char name[80];
    memset(name, ' ', sizeof name);
    if (cmname) {
        size_t len = strlen(cmname);
        memcpy(name, cmname, len < sizeof name ? len : sizeof name);
    }
    const int ndi = 3, nshr = 3, ntens = 6, layer = 1, kspt = 1;
    /* Small strain: no rotation, no deformation gradient (documented in cmake/README.md). */
    const double drot[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    const double dfgrd[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    const double zero3[3] = {0, 0, 0};
    const double zero1[1] = {0};
    double dummy_statev[1] = {0};
    double dummy_props[1] = {0};
    int count = 0;

    jmp_buf env;
    volatile int k = 0;              /* read after a longjmp: volatile */
    exit_target = &env;
    in_batch = 1;
    if (setjmp(env) != 0) {          /* XIT (or STDB_ABQERR, LOP = -3) at point k */
        exit_target = NULL;
        in_batch = 0;
        *info = k;
        return DDROM_UMAT_EXIT;
    }
    for (k = 0; k < n; ++k) {
        const size_t kk = (size_t)k;
        double sse = 0, spd = 0, scd = 0, rpl = 0, drpldt = 0, pnew = 1e36;
        double ddsddt[6] = {0}, drplde[6] = {0};
        double *D = ddsdde + 36 * kk;
        memset(D, 0, 36 * sizeof(double));         /* a UMAT may set only the non-zero entries */
        const int el = noel ? noel[kk] : k + 1, pt = npt ? npt[kk] : 1;
        const double ce = celent ? celent[kk] : 1.0;
        cur_noel = el;
        cur_npt = pt;
        umat_(stress + 6 * kk, nstatv ? statev + (size_t)nstatv * kk : dummy_statev, D, &sse, &spd, &scd, &rpl,
              ddsddt, drplde, &drpldt, stran + 6 * kk, dstran + 6 * kk, time, &dtime, temp + kk, dtemp + kk,
              npredf ? predef + (size_t)npredf * kk : zero1, npredf ? dpred + (size_t)npredf * kk : zero1, name,
              &ndi, &nshr, &ntens, &nstatv, nprops ? props : dummy_props, &nprops,
              coords ? coords + 3 * kk : zero3, drot, &pnew, &ce, dfgrd, dfgrd, &el, &pt, &layer, &kspt, &kstep,
              &kinc, (size_t)80);
        if (pnew < 1.0) ++count;
        if (pnew < *pnewdt) *pnewdt = pnew;
    }
    exit_target = NULL;
    in_batch = 0;
    *info = count;
    return msg_errors ? DDROM_UMAT_ERROR : DDROM_UMAT_OK;
}
