# crm: a sales CRM inside PostgreSQL 15, built with PGXS.
#
#   make demo        set up, build, install, start the .pg/ cluster, load the demo
#   make demo-stop   stop that cluster
#   make test        set up, build, install, run every suite on a fresh cluster
#                    of its own (.pg-test/), leaving the demo's .pg/ alone
#   make bench       set up, build, install, run bench/*.sh on the cluster
#   make test-citus  build, install, run test/citus/compare.sql distributed with Citus
#                    (its own 3-node cluster on loopback) and on one node; 0 differences
#   make install, make installcheck: as for any PGXS extension (installcheck
#                    runs against whatever server PGHOST/PGPORT point at)

EXTENSION   = crm
EXTVERSION  = 0.1.0
MODULE_big  = crm
OBJS       := $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK  = -luuid

DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
EXTRA_CLEAN = $(EXTENSION)--$(EXTVERSION).sql

# sql/*.sql run in name order in one database, crm_regress, that pg_regress
# creates empty (the first test creates the extension); each spec in specs/
# gets a database crm_isolation that already has crm.
REGRESS       := $(sort $(basename $(notdir $(wildcard sql/*.sql))))
REGRESS_OPTS   = --inputdir=.
ISOLATION     := $(sort $(basename $(notdir $(wildcard specs/*.spec))))
ISOLATION_OPTS = --load-extension=crm

# /usr/bin/pg_config on Debian picks the newest installed version; prefer 15.
PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
# PGXS appends --dbname=$(CONTRIB_TESTDB) (and ISOLATION_TESTDB) to the
# options, and pg_regress uses the last --dbname, so name the databases here.
CONTRIB_TESTDB   = crm_regress
ISOLATION_TESTDB = crm_isolation
else
# On a fresh machine only demo, test and bench work: they run setup first.
all install installcheck:
	@echo "PostgreSQL 15 build files not found (PG_CONFIG=$(PG_CONFIG)): run scripts/setup.sh" >&2; exit 1
endif

# The install script is src/sql/*.sql concatenated in name order. The
# directory is a prerequisite too: adding or removing a part changes its mtime.
SQL_PARTS := $(sort $(wildcard src/sql/*.sql))

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PARTS) $(wildcard src/sql) Makefile
	@test -n "$(SQL_PARTS)" || { echo "no install script parts in src/sql/" >&2; exit 1; }
	cat $(SQL_PARTS) > $@.tmp && mv $@.tmp $@

$(OBJS): $(wildcard src/*.h)

.PHONY: demo demo-stop test bench install-auto test-citus

# Build as the invoking user, then install: directly if PostgreSQL's
# directories are writable (root, or a private PostgreSQL); else nothing if
# the installed files are already these, else via sudo.
install-auto: all
	@if [ -w '$(DESTDIR)$(pkglibdir)' ] && [ -w '$(DESTDIR)$(datadir)/extension' ]; then \
		$(MAKE) --no-print-directory install; \
	elif cmp -s $(shlib) '$(DESTDIR)$(pkglibdir)/$(shlib)' && \
	     cmp -s $(EXTENSION).control '$(DESTDIR)$(datadir)/extension/$(EXTENSION).control' && \
	     cmp -s $(DATA_built) '$(DESTDIR)$(datadir)/extension/$(DATA_built)'; then \
		echo "crm $(EXTVERSION) is already installed"; \
	elif command -v sudo >/dev/null 2>&1; then \
		sudo $(MAKE) --no-print-directory install PG_CONFIG='$(PG_CONFIG)'; \
	else \
		echo "cannot write to $(pkglibdir) and no sudo; as root, run:" >&2; \
		echo "  make -C '$(CURDIR)' install PG_CONFIG='$(PG_CONFIG)'" >&2; \
		exit 1; \
	fi

# setup.sh may install the compiler and PGXS itself, so building and
# installing happen in a second make that reads PGXS afresh.
# The cluster preloads crm.so (cluster.sh), so a running one is restarted:
# its backends would otherwise keep the old library under the new SQL.
demo:
	scripts/setup.sh
	@echo "building and installing crm (make install-auto)"
	@$(MAKE) --no-print-directory -s install-auto
	@scripts/cluster.sh stop >/dev/null
	scripts/cluster.sh start
	@set -e; \
	psql_cmd=psql; command -v psql >/dev/null || psql_cmd=$$(scripts/cluster.sh bindir)/psql; \
	eval "$$(scripts/cluster.sh env)"; \
	psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'SET client_min_messages = warning' \
		-c 'DROP DATABASE IF EXISTS crm_demo WITH (FORCE)' -c 'CREATE DATABASE crm_demo'; \
	psql -X -q -v ON_ERROR_STOP=1 -d crm_demo -c 'CREATE EXTENSION crm'; \
	if [ -f scripts/demo.sql ]; then \
		psql -v ON_ERROR_STOP=1 -X -f scripts/demo.sql crm_demo; \
	else \
		echo "scripts/demo.sql not found: crm_demo has the extension but no demo data"; \
	fi; \
	tenant=$$(psql -X -At -d crm_demo -c "SELECT tenant_id FROM crm.tenant_access WHERE login_role = 'crm_demo'"); \
	echo; echo "The demo database is ready (demo tenant $$tenant). Open it as crm_demo, a writer of that tenant:"; \
	echo "  $$psql_cmd -h $$PGHOST -p $$PGPORT -U crm_demo crm_demo"; \
	echo "(as the superuser, which bypasses row-level security: $$psql_cmd -h $$PGHOST -p $$PGPORT -U $$PGUSER crm_demo)"; \
	echo "Stop the cluster with: make demo-stop"

demo-stop:
	scripts/cluster.sh stop

test:
	scripts/setup.sh
	$(MAKE) --no-print-directory install-auto
	scripts/test.sh

bench:
	scripts/setup.sh
	$(MAKE) --no-print-directory install-auto
	@scripts/cluster.sh stop >/dev/null
	scripts/cluster.sh start
	@set -e; eval "$$(scripts/cluster.sh env)"; \
	set -- bench/*.sh; \
	if [ ! -e "$$1" ]; then echo "no benchmarks: bench/*.sh matches nothing"; exit 0; fi; \
	status=0; \
	for b in "$$@"; do echo "== $$b"; bash "$$b" || status=1; done; \
	exit $$status

# Citus (issue 9): needs Citus installed in the PostgreSQL of PG_CONFIG
# (scripts/citus.sh check says how to get it, and fails without it); the
# nodes get ports CITUS_PORTS (default 55400-55402) and CITUS_DIR (.citus/).
test-citus:
	PG_CONFIG='$(PG_CONFIG)' scripts/citus.sh check
	scripts/setup.sh
	$(MAKE) --no-print-directory install-auto
	PG_CONFIG='$(PG_CONFIG)' scripts/citus.sh test
