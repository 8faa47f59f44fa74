/*
 * local_iot's mosquitto plugin (plugin API v5, mosquitto 2.0.x): the AWS IoT device policy on the TLS listener.
 *
 * Loaded for the whole broker (per_listener_settings false: mosquitto 2.0 runs TICK callbacks only for global
 * plugins). A client without a certificate is on the loopback-only plain listener (the TLS listener requires
 * one): it is let through untouched (the stream service, local tools). For devices it does what the ACL file could
 * not:
 *
 * - Identity (MOSQ_EVT_BASIC_AUTH, called because use_identity_as_username is off): the client certificate is
 *   looked up by the SHA-256 of its DER (AWS's certificateId). With a registry file, the certificate must be
 *   registered and ACTIVE, and the MQTT client id must be a thing attached to it (AWS's per-thing policy:
 *   iot:Connect on client/${iot:Connection.Thing.ThingName}). Without a registry, the client id must equal the
 *   certificate's CN. The username becomes the client id (= the thing name), whatever the client sent.
 * - Topics (MOSQ_EVT_ACL_CHECK): publish, subscribe and receive only under the allowed prefixes, where %c is the
 *   client id (default "$aws/things/%c/streams/"). A SUBSCRIBE outside them is refused in the SUBACK
 *   (0x80 in MQTT 3.1.1, 0x87 in MQTT 5), as AWS does. A PUBLISH outside them is dropped and the client is
 *   disconnected at the next tick, as AWS does on a policy violation (kicking inside the ACL check is unsafe).
 * - Certificate status (MOSQ_EVT_TICK): the registry file is re-read when it changes; clients whose certificate
 *   is no longer registered and ACTIVE (or no longer attached to their thing) are disconnected, as AWS does after
 *   UpdateCertificate to INACTIVE/REVOKED.
 * - Jobs answers (MOSQ_EVT_MESSAGE): AWS delivers a Jobs answer to the client that asked even when it did not
 *   subscribe to the answer topic. The Jobs service publishes each answer on the private topic
 *   "local-iot/jobs-reply/<thing>/<answer topic>"; for such a message from a client without a certificate, the
 *   plugin hands the payload (QoS, MQTT 5 properties) to mosquitto_broker_publish() addressed to client id <thing>
 *   (= its thing name), which delivers it to that one client whether or not it subscribed (nothing when no
 *   client has that id), and drops the private message (the sender gets PUBACK "not authorized"), so no
 *   subscriber sees it. mosquitto 2.0 does not check read access for a message addressed to a client id, so the
 *   answer topic must be one of that thing's own "$aws/things/<thing>/jobs/" topics. A device cannot use this
 *   path: the prefix is outside its topics (dropped and disconnected by the ACL check above), and a message from
 *   a client with a certificate is dropped here as well.
 *
 * Options: plugin_opt_registry PATH (lines "<sha256 hex> <STATUS> <thing>[,<thing>...]" or "-" for none;
 * rewritten atomically by local_iot), plugin_opt_allow PREFIX[,PREFIX...].
 *
 * OpenSSL is reached through the few prototypes below: the broker already links libcrypto, so the symbols
 * resolve when mosquitto loads this file and no OpenSSL headers are needed to build it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* libcrypto (OpenSSL 1.1/3.x ABI) */
int i2d_X509(void *x, unsigned char **out);
void X509_free(void *x);
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
void *X509_get_subject_name(const void *x);
int X509_NAME_get_text_by_NID(void *name, int nid, char *buf, int len);
#define NID_COMMON_NAME 13

#define MAX_PREFIXES 8
#define MAX_ID 256
#define JOBS_REPLY_PREFIX "local-iot/jobs-reply/"
#define JOBS_TOPIC_PREFIX "$aws/things/"

struct cert_entry {
	char fingerprint[65];
	bool active;
	char *things; /* ",a,b," for a simple substring test */
};

struct connected {
	char *client_id;
	char fingerprint[65];
};

static mosquitto_plugin_id_t *plugin_id;
static char *registry_path;
static struct cert_entry *entries;
static size_t entry_count;
static bool registry_loaded;
static bool registry_dirty; /* loaded since the last check of the connected clients */
static struct stat registry_stat;
static time_t last_check_s;
static long last_check_ns;
static char *prefixes[MAX_PREFIXES];
static int prefix_count;
static struct connected *clients;
static size_t client_count, client_cap;
#define MAX_PENDING_KICKS 64
static char *pending_kicks[MAX_PENDING_KICKS];
static int pending_kick_count;

static void schedule_kick(const char *client_id)
{
	for(int i = 0; i < pending_kick_count; i++){
		if(strcmp(pending_kicks[i], client_id) == 0){
			return;
		}
	}
	if(pending_kick_count < MAX_PENDING_KICKS){
		char *copy = strdup(client_id);
		if(copy){
			pending_kicks[pending_kick_count++] = copy;
		}
	}
}

static void run_pending_kicks(void)
{
	for(int i = 0; i < pending_kick_count; i++){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "local-iot: disconnecting %s: it published outside its topics",
				pending_kicks[i]);
		mosquitto_kick_client_by_clientid(pending_kicks[i], false);
		free(pending_kicks[i]);
	}
	pending_kick_count = 0;
}

static void free_entries(struct cert_entry *list, size_t count)
{
	for(size_t i = 0; i < count; i++){
		free(list[i].things);
	}
	free(list);
}

/* Read the registry; keeps the old one when the file cannot be read. Returns true when it changed. */
static bool load_registry(void)
{
	FILE *f = fopen(registry_path, "r");
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "local-iot plugin: cannot read the registry %s", registry_path);
		return false;
	}
	struct cert_entry *list = NULL;
	size_t count = 0, cap = 0;
	char line[8192];
	while(fgets(line, sizeof(line), f)){
		char fp[65], status[32], things[8000];
		things[0] = '\0';
		if(line[0] == '#' || sscanf(line, "%64s %31s %7999s", fp, status, things) < 2){
			continue;
		}
		if(count == cap){
			cap = cap ? cap * 2 : 64;
			struct cert_entry *grown = realloc(list, cap * sizeof(*list));
			if(!grown){
				fclose(f);
				free_entries(list, count);
				return false;
			}
			list = grown;
		}
		struct cert_entry *e = &list[count];
		snprintf(e->fingerprint, sizeof(e->fingerprint), "%s", fp);
		e->active = strcmp(status, "ACTIVE") == 0;
		size_t n = strlen(things) + 3;
		e->things = malloc(n);
		if(!e->things){
			fclose(f);
			free_entries(list, count);
			return false;
		}
		snprintf(e->things, n, ",%s,", strcmp(things, "-") == 0 ? "" : things);
		count++;
	}
	fclose(f);
	free_entries(entries, entry_count);
	entries = list;
	entry_count = count;
	registry_loaded = true;
	registry_dirty = true;
	return true;
}

static const struct cert_entry *find_entry(const char *fingerprint)
{
	for(size_t i = 0; i < entry_count; i++){
		if(strcmp(entries[i].fingerprint, fingerprint) == 0){
			return &entries[i];
		}
	}
	return NULL;
}

static bool thing_attached(const struct cert_entry *e, const char *client_id)
{
	char needle[MAX_ID + 3];
	if(strlen(client_id) > MAX_ID || strchr(client_id, ',')){
		return false;
	}
	snprintf(needle, sizeof(needle), ",%s,", client_id);
	return strstr(e->things, needle) != NULL;
}

static bool registry_changed(void);
static bool load_registry(void);
static void kick_invalid(void);

/* NULL when (fingerprint, client id) may connect, else the reason. */
static const char *refusal(const char *fingerprint, const char *cn, const char *client_id)
{
	if(!registry_path){
		return strcmp(cn, client_id) == 0 ? NULL : "the client id is not the certificate's CN (thing name)";
	}
	/* A connect right after a control-plane change must see it: one stat() per connect (the tick kicks). */
	if(registry_changed()){
		load_registry();
	}
	const struct cert_entry *e = find_entry(fingerprint);
	if(!e){
		return "the certificate is not registered";
	}
	if(!e->active){
		return "the certificate is not ACTIVE";
	}
	if(!thing_attached(e, client_id)){
		return "the client id is not a thing attached to the certificate";
	}
	return NULL;
}

static void remember(const char *client_id, const char *fingerprint)
{
	for(size_t i = 0; i < client_count; i++){
		if(strcmp(clients[i].client_id, client_id) == 0){
			snprintf(clients[i].fingerprint, sizeof(clients[i].fingerprint), "%s", fingerprint);
			return;
		}
	}
	if(client_count == client_cap){
		size_t cap = client_cap ? client_cap * 2 : 64;
		struct connected *grown = realloc(clients, cap * sizeof(*clients));
		if(!grown){
			return;
		}
		clients = grown;
		client_cap = cap;
	}
	clients[client_count].client_id = strdup(client_id);
	if(!clients[client_count].client_id){
		return;
	}
	snprintf(clients[client_count].fingerprint, sizeof(clients[client_count].fingerprint), "%s", fingerprint);
	client_count++;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	const char *client_id = mosquitto_client_id(ed->client);
	const char *address = mosquitto_client_address(ed->client);
	void *cert = mosquitto_client_certificate(ed->client);
	if(!cert){
		return MOSQ_ERR_SUCCESS; /* the plain listener: local tools and the stream service */
	}
	if(!client_id){
		X509_free(cert);
		return MOSQ_ERR_AUTH;
	}
	char cn[MAX_ID + 1] = "";
	void *subject = X509_get_subject_name(cert);
	if(!subject || X509_NAME_get_text_by_NID(subject, NID_COMMON_NAME, cn, sizeof(cn)) < 0){
		cn[0] = '\0';
	}
	unsigned char digest[32];
	char fingerprint[65];
	int len = i2d_X509(cert, NULL);
	unsigned char *der = len > 0 ? malloc((size_t)len) : NULL;
	unsigned char *cursor = der;
	if(!der || i2d_X509(cert, &cursor) != len){
		free(der);
		X509_free(cert);
		return MOSQ_ERR_AUTH;
	}
	SHA256(der, (size_t)len, digest);
	free(der);
	X509_free(cert);
	for(int i = 0; i < 32; i++){
		snprintf(fingerprint + 2 * i, 3, "%02x", digest[i]);
	}
	const char *why = refusal(fingerprint, cn, client_id);
	if(why){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "local-iot: refused client id '%s' from %s (certificate %.16s..., CN '%s'): %s",
				client_id, address, fingerprint, cn, why);
		return MOSQ_ERR_AUTH;
	}
	mosquitto_set_username(ed->client, client_id);
	remember(client_id, fingerprint);
	return MOSQ_ERR_SUCCESS;
}

static bool under_prefix(const char *topic, const char *client_id)
{
	for(int i = 0; i < prefix_count; i++){
		const char *p = prefixes[i];
		const char *t = topic;
		bool ok = true;
		while(*p){
			if(p[0] == '%' && p[1] == 'c'){
				size_t n = strlen(client_id);
				if(strncmp(t, client_id, n) != 0){
					ok = false;
					break;
				}
				t += n;
				p += 2;
			}else if(*t++ != *p++){
				ok = false;
				break;
			}
		}
		if(ok){
			return true;
		}
	}
	return false;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE){
		return MOSQ_ERR_SUCCESS;
	}
	void *cert = mosquitto_client_certificate(ed->client);
	if(!cert){
		return MOSQ_ERR_SUCCESS; /* the plain listener */
	}
	X509_free(cert);
	const char *client_id = mosquitto_client_id(ed->client);
	if(!client_id || strpbrk(client_id, "+#/")){
		return MOSQ_ERR_ACL_DENIED;
	}
	if(under_prefix(ed->topic, client_id)){
		return MOSQ_ERR_SUCCESS;
	}
	if(ed->access == MOSQ_ACL_SUBSCRIBE){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "local-iot: refused SUBSCRIBE of '%s' to client %s", ed->topic, client_id);
	}else if(ed->access == MOSQ_ACL_WRITE){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "local-iot: denied PUBLISH to '%s' from client %s", ed->topic, client_id);
		schedule_kick(client_id);
	}
	return MOSQ_ERR_ACL_DENIED;
}

/* The answer topic of a private Jobs reply when it is "<thing>/$aws/things/<thing>/jobs/<rest>", else NULL;
 * the thing (client id) is copied to thing[MAX_ID + 1]. */
static const char *jobs_answer_topic(const char *rest, char *thing)
{
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : 0;
	if(n == 0 || n > MAX_ID){
		return NULL;
	}
	memcpy(thing, rest, n);
	thing[n] = '\0';
	const char *answer = slash + 1;
	size_t p = strlen(JOBS_TOPIC_PREFIX);
	if(strncmp(answer, JOBS_TOPIC_PREFIX, p) != 0 || strncmp(answer + p, thing, n) != 0
			|| strncmp(answer + p + n, "/jobs/", 6) != 0 || answer[p + n + 6] == '\0'){
		return NULL;
	}
	return answer;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	(void)event;
	(void)userdata;
	size_t prefix_len = strlen(JOBS_REPLY_PREFIX);
	if(!ed->topic || strncmp(ed->topic, JOBS_REPLY_PREFIX, prefix_len) != 0){
		return MOSQ_ERR_SUCCESS;
	}
	const char *sender = mosquitto_client_id(ed->client);
	void *cert = mosquitto_client_certificate(ed->client);
	if(cert){ /* a device: never (the ACL check refuses it first); drop it all the same */
		X509_free(cert);
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "local-iot: dropped a Jobs reply published by device %s",
				sender ? sender : "?");
		return MOSQ_ERR_ACL_DENIED;
	}
	char thing[MAX_ID + 1];
	const char *answer = jobs_answer_topic(ed->topic + prefix_len, thing);
	if(!answer){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "local-iot: dropped '%s' from %s: not %s<thing>/%s<thing>/jobs/...",
				ed->topic, sender ? sender : "?", JOBS_REPLY_PREFIX, JOBS_TOPIC_PREFIX);
		return MOSQ_ERR_ACL_DENIED;
	}
	mosquitto_property *properties = NULL;
	int rc = ed->properties ? mosquitto_property_copy_all(&properties, ed->properties) : MOSQ_ERR_SUCCESS;
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_broker_publish_copy(thing, answer, (int)ed->payloadlen, ed->payload, ed->qos, false, properties);
	}
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&properties);
		mosquitto_log_printf(MOSQ_LOG_WARNING, "local-iot: could not deliver '%s' to %s (error %d)", answer, thing, rc);
	}
	return MOSQ_ERR_ACL_DENIED; /* the private message itself goes to nobody */
}

static bool registry_changed(void)
{
	struct stat st;
	if(stat(registry_path, &st) != 0){
		return false;
	}
	bool changed = !registry_loaded || st.st_ino != registry_stat.st_ino || st.st_size != registry_stat.st_size
		|| st.st_mtim.tv_sec != registry_stat.st_mtim.tv_sec || st.st_mtim.tv_nsec != registry_stat.st_mtim.tv_nsec;
	if(changed){
		registry_stat = st;
	}
	return changed;
}

static void kick_invalid(void)
{
	for(size_t i = 0; i < client_count; i++){
		const struct cert_entry *e = find_entry(clients[i].fingerprint);
		if(!e || !e->active || !thing_attached(e, clients[i].client_id)){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "local-iot: disconnecting %s: its certificate %.16s... is %s",
					clients[i].client_id, clients[i].fingerprint,
					!e ? "no longer registered" : !e->active ? "no longer ACTIVE" : "no longer attached to it");
			mosquitto_kick_client_by_clientid(clients[i].client_id, false);
			free(clients[i].client_id);
			clients[i] = clients[client_count - 1];
			client_count--;
			i--;
		}
	}
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data; /* mosquitto 2.0.11 leaves its time fields at 0: use our own clock */
	(void)userdata;
	run_pending_kicks();
	if(!registry_path){
		return MOSQ_ERR_SUCCESS;
	}
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	long elapsed_ms = (long)(now.tv_sec - last_check_s) * 1000 + (now.tv_nsec - last_check_ns) / 1000000;
	if(elapsed_ms >= 0 && elapsed_ms < 50){ /* at most every 50 ms */
		return MOSQ_ERR_SUCCESS;
	}
	last_check_s = now.tv_sec;
	last_check_ns = now.tv_nsec;
	if(registry_changed() && load_registry()){
		mosquitto_log_printf(MOSQ_LOG_INFO, "local-iot: registry reloaded (%zu certificates)", entry_count);
	}
	if(registry_dirty){
		registry_dirty = false;
		kick_invalid();
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

static void add_prefixes(const char *value)
{
	char *copy = strdup(value);
	char *save = NULL;
	for(char *tok = strtok_r(copy, ",", &save); tok && prefix_count < MAX_PREFIXES; tok = strtok_r(NULL, ",", &save)){
		prefixes[prefix_count++] = strdup(tok);
	}
	free(copy);
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < opt_count; i++){
		if(strcmp(opts[i].key, "registry") == 0){
			registry_path = strdup(opts[i].value);
		}else if(strcmp(opts[i].key, "allow") == 0){
			add_prefixes(opts[i].value);
		}
	}
	if(prefix_count == 0){
		add_prefixes("$aws/things/%c/streams/");
	}
	if(registry_path){
		registry_changed();
		if(!load_registry()){
			return MOSQ_ERR_INVAL;
		}
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(!rc){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	}
	if(!rc){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	}
	if(!rc){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "local-iot plugin: %s, %d topic prefixes",
			registry_path ? "certificate registry" : "client id = certificate CN", prefix_count);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	for(int i = 0; i < pending_kick_count; i++){
		free(pending_kicks[i]);
	}
	pending_kick_count = 0;
	free_entries(entries, entry_count);
	entries = NULL;
	entry_count = 0;
	for(size_t i = 0; i < client_count; i++){
		free(clients[i].client_id);
	}
	free(clients);
	clients = NULL;
	client_count = client_cap = 0;
	for(int i = 0; i < prefix_count; i++){
		free(prefixes[i]);
	}
	prefix_count = 0;
	free(registry_path);
	registry_path = NULL;
	return MOSQ_ERR_SUCCESS;
}
