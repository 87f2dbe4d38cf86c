/*
 * A warm function for edgeloader (docs/functions.md, "Warm functions"):
 * it serves HTTP/1.1 on the unix socket $EDGELOADER_SOCKET, one request at
 * a time, and answers each POST /invoke with JSON: a token drawn when it
 * started (the same for every invoke the container serves), how many
 * invokes it has served, the run id the loader sent, and the body's size.
 * A body containing "crash" makes it exit, "sleep" makes it hang, "fail"
 * makes it answer 500: the loader's tests use them.
 *
 * Build it static, so it needs nothing from its image:
 *   gcc -static -O2 -o handler handler.c
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_HEAD 16384
#define MAX_BODY (1 << 20)

static char head[MAX_HEAD + 1];
static char body[MAX_BODY + 1];

static int read_request(int fd, char *run_id, size_t run_id_size, size_t *body_len) {
    size_t used = 0;
    char *end = NULL;
    while (!end) {
        if (used == MAX_HEAD) return -1;
        ssize_t got = read(fd, head + used, MAX_HEAD - used);
        if (got <= 0) return -1;
        used += (size_t)got;
        head[used] = '\0';
        end = strstr(head, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - head) + 4;
    size_t length = 0;
    run_id[0] = '\0';
    for (char *line = strstr(head, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        char *name = line + 2;
        if (strncasecmp(name, "Content-Length:", 15) == 0) length = strtoul(name + 15, NULL, 10);
        if (strncasecmp(name, "X-Edgeloader-Run-Id:", 20) == 0) {
            char *value = name + 20;
            while (*value == ' ') value++;
            size_t n = 0;
            while (n + 1 < run_id_size && isxdigit((unsigned char)value[n])) {
                run_id[n] = value[n];
                n++;
            }
            run_id[n] = '\0';
        }
    }
    if (length > MAX_BODY) return -1;
    size_t have = used - head_len;
    if (have > length) have = length;
    memcpy(body, head + head_len, have);
    while (have < length) {
        ssize_t got = read(fd, body + have, length - have);
        if (got <= 0) return -1;
        have += (size_t)got;
    }
    body[length] = '\0';
    *body_len = length;
    return 0;
}

static void answer(int fd, int status, const char *text) {
    char out[512];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, status == 200 ? "OK" : "Error", strlen(text), text);
    if (n > 0 && write(fd, out, (size_t)n) < 0) perror("write");
}

int main(void) {
    const char *path = getenv("EDGELOADER_SOCKET");
    if (!path) path = "/app/functions/function.sock";
    unsigned char raw[8];
    FILE *random = fopen("/dev/urandom", "rb");
    if (!random || fread(raw, 1, sizeof raw, random) != sizeof raw) return 1;
    fclose(random);
    char token[17];
    for (int i = 0; i < 8; i++) snprintf(token + 2 * i, 3, "%02x", raw[i]);

    int server = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    unlink(path);
    if (bind(server, (struct sockaddr *)&address, sizeof address) < 0 || listen(server, 8) < 0) {
        perror("listen");
        return 1;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready, token %s\n", token);
    long served = 0; /* requests, not connections: the loader's readiness check is one */
    for (;;) {
        int client = accept(server, NULL, NULL);
        if (client < 0) continue;
        char run_id[64];
        size_t length = 0;
        if (read_request(client, run_id, sizeof run_id, &length) == 0) {
            served++;
            printf("invoke %ld, run %s\n", served, run_id);
            if (strstr(body, "crash")) return 3;
            if (strstr(body, "sleep")) sleep(3600);
            if (strstr(body, "fail")) {
                answer(client, 500, "handler failed: asked to\n");
            } else {
                char result[256];
                snprintf(result, sizeof result,
                         "{\"token\": \"%s\", \"n\": %ld, \"runId\": \"%s\", \"bytes\": %zu}",
                         token, served, run_id, length);
                answer(client, 200, result);
            }
        }
        close(client);
    }
}
