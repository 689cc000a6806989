#!/bin/sh
# stowage external plugin, protocol 1: an OpenLDAP subtree as LDIF.
#
#   backup   ldapsearch of spec.external.config.baseDn and everything below it (user
#            attributes only, unwrapped LDIF), streamed to stdout
#   restore  ldapadd of that LDIF from stdin, parents before children, into a server
#            where baseDn does not exist yet (IntoEmpty; Replace is refused)
#   inspect  whether baseDn exists on the server (holdsData)
#   probe    bind, then count the entries under baseDn
#
# POSIX sh (busybox ash in the image, dash or bash elsewhere), jq and ldap-utils.
# The bind password only ever goes to a 0600 file in a private temporary directory,
# read by the ldap tools with -y and removed on exit; it is never in argv, the
# environment of a child, a message or the report.
set -u

op="${1:-${STOWAGE_OPERATION:-}}"
work=""
cleanup() {
  if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 143' HUP INT TERM

# The report goes to $STOWAGE_REPORT (a JSON object on stdin of this function).
write_report() {
  if [ -n "${STOWAGE_REPORT:-}" ]; then
    cat >"$STOWAGE_REPORT"
  else
    cat >/dev/null
  fi
}

# fail EXIT_CODE KIND MESSAGE: the error report, a line on stderr, and the exit code of
# the kind (protocol 1).
fail() {
  printf 'ldap plugin: %s: %s\n' "$2" "$3" >&2
  jq -n --arg kind "$2" --arg message "$3" '{error: {kind: $kind, message: $message}}' | write_report
  exit "$1"
}

# Run, not only found: a jq whose libraries are missing must not look like bad JSON.
jq -n empty >/dev/null 2>&1 || {
  echo "ldap plugin: ToolFailed: jq is missing from the plugin's image or does not run there: $(jq -n empty 2>&1 | head -n 1)" >&2
  exit 18
}

[ "${STOWAGE_PROTOCOL:-}" = 1 ] ||
  fail 17 Unsupported "this plugin speaks stowage protocol 1; the runner asked for protocol '${STOWAGE_PROTOCOL:-}'"

case "$op" in
  probe | backup | inspect | restore) ;;
  *) fail 17 Unsupported "unknown operation '$op': this plugin knows probe, backup, inspect and restore" ;;
esac

# --- configuration -----------------------------------------------------------------
# The runner has validated STOWAGE_CONFIG against the schema already; checking again
# here keeps the script safe to run by hand and its errors precise. One jq program
# either names the first problem or prints shell assignments (quoted by @sh).
config="${STOWAGE_CONFIG:-}"
[ -n "$config" ] || fail 10 InvalidConfig "STOWAGE_CONFIG is empty: the target needs spec.external.config"
assignments="$(printf '%s' "$config" | jq -r '
  def where($f): "spec.external.config.\($f)";
  def str($f; $example):
    if (.[$f] | type) != "string" or .[$f] == ""
    then "\(where($f)) is required (a string, e.g. \($example))" else empty end;
  if type != "object" then "ERROR=" + ("spec.external.config must be an object" | @sh)
  else
    ([ (keys[] | select(IN("url", "baseDn", "bindDn", "bindPasswordSecretRef", "timeoutSeconds", "startTls") | not)
        | "\(where(.)) is not a field of the ldap plugin (it knows url, baseDn, bindDn, bindPasswordSecretRef, timeoutSeconds, startTls)"),
       str("url"; "ldap://ldap.shop.svc:389"),
       (if (.url | type) == "string" and .url != "" and (.url | test("^ldaps?://") | not)
        then "\(where("url")) must start with ldap:// or ldaps:// (got \(.url | tojson))" else empty end),
       str("baseDn"; "dc=example,dc=org"),
       str("bindDn"; "cn=admin,dc=example,dc=org"),
       (if (.bindPasswordSecretRef | type) != "object"
          or (.bindPasswordSecretRef.name | type) != "string"
          or (.bindPasswordSecretRef.key | type) != "string"
        then "\(where("bindPasswordSecretRef")) is required: {name, key} of the Secret that holds the bind password" else empty end),
       (if has("timeoutSeconds") and ((.timeoutSeconds | type) != "number"
            or .timeoutSeconds != (.timeoutSeconds | floor)
            or .timeoutSeconds < 1 or .timeoutSeconds > 3600)
        then "\(where("timeoutSeconds")) must be a whole number of seconds from 1 to 3600 (got \(.timeoutSeconds | tojson))" else empty end),
       (if has("startTls") and (.startTls | type) != "boolean"
        then "\(where("startTls")) must be true or false (got \(.startTls | tojson))" else empty end),
       (if .startTls == true and ((.url // "") | test("^ldaps://"))
        then "\(where("startTls")) is for ldap:// URLs; \(where("url")) is ldaps:// and already uses TLS: remove startTls" else empty end)
     ] | first // null) as $error
    | if $error != null then "ERROR=" + ($error | @sh)
      else "url=\(.url | @sh) base=\(.baseDn | @sh) bind=\(.bindDn | @sh) " +
           "timeout=\(.timeoutSeconds // 30 | tostring | @sh) starttls=\(.startTls // false | tostring | @sh)"
      end
  end' 2>/dev/null)" || fail 10 InvalidConfig "STOWAGE_CONFIG is not valid JSON: check spec.external.config"
ERROR=""
eval "$assignments"
[ -z "$ERROR" ] || fail 10 InvalidConfig "$ERROR"

if [ -z "${STOWAGE_SECRET_BINDPASSWORDSECRETREF+set}" ]; then
  fail 10 InvalidConfig "no bind password: the runner passes the Secret value named by spec.external.config.bindPasswordSecretRef as STOWAGE_SECRET_BINDPASSWORDSECRETREF, and it is not set"
fi
if [ -z "$STOWAGE_SECRET_BINDPASSWORDSECRETREF" ]; then
  unset STOWAGE_SECRET_BINDPASSWORDSECRETREF
  fail 10 InvalidConfig "the bind password is empty (an LDAP bind without a password is anonymous): put the password in the Secret key named by spec.external.config.bindPasswordSecretRef"
fi

# mktemp -d makes the directory 0700; the password file in it is 0600 on top of that
# (umask in a subshell: the report and other files keep the runner's umask).
work="$(mktemp -d "${TMPDIR:-/tmp}/stowage-ldap.XXXXXX")" || {
  unset STOWAGE_SECRET_BINDPASSWORDSECRETREF
  fail 16 IoError "cannot create a temporary directory under ${TMPDIR:-/tmp}"
}
# printf is a shell builtin: the password is in no process's argv.
(umask 077 && printf '%s' "$STOWAGE_SECRET_BINDPASSWORDSECRETREF" >"$work/bindpw") || {
  unset STOWAGE_SECRET_BINDPASSWORDSECRETREF
  fail 16 IoError "cannot write the bind password file under ${TMPDIR:-/tmp}"
}
unset STOWAGE_SECRET_BINDPASSWORDSECRETREF
pwfile="$work/bindpw"

# The ldap tools read ./ldaprc: start from a directory nobody else writes to.
cd "$work" || fail 16 IoError "cannot enter $work"
# How long to wait for each answer of the server (libldap's TIMEOUT option).
LDAPTIMEOUT="$timeout"
export LDAPTIMEOUT
tls=""
if [ "$starttls" = true ]; then tls="-ZZ"; fi

# ldap_fail RC STDERR_FILE WHAT: exit with the kind that the ldap tool's result means.
# The tools exit with the LDAP result code (49, 32, ...) or its negative client code
# modulo 256 (-1 "Can't contact LDAP server" is 255), and print "... (CODE)" on stderr.
ldap_fail() {
  rc="$1"
  detail="$(grep -v '^Warning: ' "$2" | tr '\n' ' ' | sed 's/[[:space:]][[:space:]]*/ /g; s/ $//' | cut -c1-300)"
  [ -n "$detail" ] || detail="exit code $rc"
  case "$rc" in
    49) fail 13 Unauthorized "the bind to $url as $bind was refused (invalid credentials): check spec.external.config.bindDn and the password in the Secret named by spec.external.config.bindPasswordSecretRef" ;;
    48 | 53) fail 13 Unauthorized "the server at $url does not accept a simple bind as $bind ($detail): check spec.external.config.bindDn, and spec.external.config.startTls if it requires TLS" ;;
    50) fail 13 Unauthorized "$bind may not $3 on $url ($detail): grant it access to spec.external.config.baseDn or bind as another DN (spec.external.config.bindDn)" ;;
    32) fail 11 NotFound "$base does not exist on $url ($detail): check spec.external.config.baseDn" ;;
    3) fail 15 Timeout "$url stopped the $3 at its time limit: raise the limit for $bind on the server (olcLimits / olcTimeLimit)" ;;
    4) fail 14 RemoteError "$url stopped the $3 at its size limit, so the result is partial: give $bind unlimited size (olcLimits size=unlimited) on the server" ;;
    127) fail 18 ToolFailed "the ldap tool for the $3 is missing from the plugin's image: $detail" ;;
  esac
  case "$detail" in
    *ldap_start_tls*) fail 12 Unreachable "StartTLS with $url failed ($detail): check the server's TLS setup or spec.external.config.startTls" ;;
    *"Timed out"* | *"(-5)"*) fail 15 Timeout "$url did not answer the $3 within ${timeout}s ($detail): check the server, or raise spec.external.config.timeoutSeconds" ;;
    *"Can't contact LDAP server"* | *"(-1)"* | *"Connect error"* | *"(-11)"*)
      fail 12 Unreachable "cannot contact the LDAP server at $url ($detail): check spec.external.config.url and that the server is up and reachable from the namespace" ;;
  esac
  fail 14 RemoteError "the $3 on $url failed: $detail"
}

# The options every tool gets: simple bind, the password file, the connect timeout.
# $tls is unquoted on purpose: it is empty or -ZZ.

# whoami: the DN the server says we are bound as.
whoami() {
  ldapwhoami -x -H "$url" -D "$bind" -y "$pwfile" -o nettimeout="$timeout" $tls >"$work/whoami" 2>"$work/err" ||
    ldap_fail $? "$work/err" "bind"
  sed -n 's/^dn://p' "$work/whoami" | head -n 1
}

# base_exists: 0 when baseDn exists, 1 when it does not; any other failure exits.
base_exists() {
  ldapsearch -x -H "$url" -D "$bind" -y "$pwfile" -o nettimeout="$timeout" $tls \
    -LLL -a never -b "$base" -s base '(objectClass=*)' 1.1 >/dev/null 2>"$work/err"
  rc=$?
  case "$rc" in
    0) return 0 ;;
    32) return 1 ;;
    *) ldap_fail "$rc" "$work/err" "search of $base" ;;
  esac
}

# count_entries: the number of entries from baseDn down.
count_entries() {
  n="$({
    ldapsearch -x -H "$url" -D "$bind" -y "$pwfile" -o nettimeout="$timeout" $tls \
      -LLL -o ldif-wrap=no -a never -M -z 0 -b "$base" -s sub '(objectClass=*)' 1.1 2>"$work/err"
    echo $? >"$work/rc"
  } | grep -c '^dn:')"
  rc="$(cat "$work/rc")"
  [ "$rc" = 0 ] || ldap_fail "$rc" "$work/err" "search of $base"
  echo "$n"
}

# vendor: who makes the server, from the root DSE.
vendor() {
  ldapsearch -x -H "$url" -D "$bind" -y "$pwfile" -o nettimeout="$timeout" $tls \
    -LLL -o ldif-wrap=no -b "" -s base '(objectClass=*)' vendorName vendorVersion objectClass >"$work/dse" 2>"$work/err" ||
    ldap_fail $? "$work/err" "read of the root DSE"
  name="$(sed -n 's/^vendorName: //p' "$work/dse" | head -n 1)"
  version="$(sed -n 's/^vendorVersion: //p' "$work/dse" | head -n 1)"
  if [ -n "$name" ]; then
    echo "$name${version:+ $version}"
  elif grep -qi '^objectClass: OpenLDAProotDSE' "$work/dse"; then
    echo "OpenLDAP"
  else
    echo "unknown"
  fi
}

# restore_target_checks: what inspect and restore refuse before touching the server.
restore_target_checks() {
  if [ -n "${STOWAGE_RESTORE_INTO:-}" ]; then
    fail 17 Unsupported "restoring into another name ('${STOWAGE_RESTORE_INTO}') is not supported: DNs inside values (member, seeAlso, ...) would still name $base; restore into a server where $base does not exist"
  fi
  facts="${STOWAGE_FACTS:-}"
  [ -n "$facts" ] || facts='{}'
  backed_up="$(printf '%s' "$facts" | jq -r '.baseDn // empty' 2>/dev/null)"
  if [ -n "$backed_up" ]; then
    a="$(printf '%s' "$backed_up" | tr 'A-Z' 'a-z' | sed 's/, */,/g')"
    b="$(printf '%s' "$base" | tr 'A-Z' 'a-z' | sed 's/, */,/g')"
    [ "$a" = "$b" ] ||
      fail 10 InvalidConfig "the backup holds the subtree $backed_up but spec.external.config.baseDn is $base: restore into a target whose baseDn is $backed_up"
  fi
}

case "$op" in
  probe)
    me="$(whoami)" || exit $?
    base_exists || fail 11 NotFound "$base does not exist on $url: check spec.external.config.baseDn"
    n="$(count_entries)" || exit $?
    v="$(vendor)" || exit $?
    jq -n --arg m "bound as ${me:-$bind} to $url; $n entries under $base" --arg v "$v" --arg n "$n" \
      '{message: $m, facts: {serverVendor: $v, entries: $n}}' | write_report
    ;;

  backup)
    # Streamed: awk passes every line through and counts the entries on the way.
    {
      ldapsearch -x -H "$url" -D "$bind" -y "$pwfile" -o nettimeout="$timeout" $tls \
        -LLL -o ldif-wrap=no -a never -M -z 0 -b "$base" -s sub '(objectClass=*)' '*' 2>"$work/err"
      echo $? >"$work/rc"
    } | awk -v out="$work/count" '{ print } /^dn:/ { n++ } END { print n + 0 > out }'
    awk_rc=$?
    rc="$(cat "$work/rc" 2>/dev/null || echo 19)"
    [ "$rc" = 0 ] || ldap_fail "$rc" "$work/err" "backup search of $base"
    [ "$awk_rc" = 0 ] || fail 16 IoError "writing the LDIF to stdout failed"
    n="$(cat "$work/count")"
    cat "$work/err" >&2
    jq -n --arg base "$base" --arg n "$n" '{facts: {baseDn: $base, entries: $n}}' | write_report
    ;;

  inspect)
    restore_target_checks
    if base_exists; then
      n="$(count_entries)" || exit $?
      jq -n --arg d "$url holds $base with $n entries" '{holdsData: true, description: $d}' | write_report
    else
      jq -n --arg d "$url has no entry $base: empty, a restore adds it and everything below it" \
        '{holdsData: false, description: $d}' | write_report
    fi
    ;;

  restore)
    restore_target_checks
    case "${STOWAGE_RESTORE_MODE:-IntoEmpty}" in
      IntoEmpty) ;;
      Replace) fail 17 Unsupported "Replace is not supported by the ldap plugin (it would delete $base on $url before adding the backup): delete the subtree yourself (ldapdelete -r) and restore IntoEmpty" ;;
      *) fail 17 Unsupported "unknown restore mode '${STOWAGE_RESTORE_MODE}'" ;;
    esac
    if base_exists; then
      fail 21 DestinationNotEmpty "$base already exists on $url: restore into a server where it does not, or delete it first"
    fi
    # ldapadd needs every parent before its children, but a search returns entries in
    # the server's order (an entry moved under a newer parent comes first). Sort the
    # records by the depth of their DN (its unescaped commas, base64 DNs decoded) into
    # one file per depth, then add the files shallowest first.
    mkdir "$work/depth" || fail 16 IoError "cannot create $work/depth"
    awk -v dir="$work/depth" -v out="$work/records" '
      function depth(s,   i, n, c, esc) {
        n = 0; esc = 0
        for (i = 1; i <= length(s); i++) {
          c = substr(s, i, 1)
          if (esc) { esc = 0; continue }
          if (c == "\\") esc = 1
          else if (c == ",") n++
        }
        return n
      }
      function b64depth(s,   alphabet, i, v, bits, acc, n, b, esc) {
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        n = 0; esc = 0; bits = 0; acc = 0
        for (i = 1; i <= length(s); i++) {
          v = index(alphabet, substr(s, i, 1)) - 1
          if (v < 0) continue
          acc = acc * 64 + v; bits += 6
          if (bits >= 8) {
            bits -= 8
            b = int(acc / pow2[bits]); acc = acc - b * pow2[bits]
            if (esc) esc = 0
            else if (b == 92) esc = 1
            else if (b == 44) n++
          }
        }
        return n
      }
      function flush_dn(   f) {
        if (dn ~ /^dn::/) d = b64depth(substr(dn, 5)); else d = depth(substr(dn, 4))
        file = sprintf("%s/d%05d.ldif", dir, d)
        printf "%s", dnlines > file
        indn = 0
      }
      BEGIN {
        inrec = 0; indn = 0; records = 0
        # busybox awk may lack "^" (no math support): powers of two by table.
        pow2[0] = 1; pow2[1] = 2; pow2[2] = 4; pow2[3] = 8; pow2[4] = 16; pow2[5] = 32; pow2[6] = 64; pow2[7] = 128
      }
      {
        sub(/\r$/, "")
        if (indn) {
          if ($0 ~ /^ /) { dn = dn substr($0, 2); dnlines = dnlines $0 "\n"; next }
          flush_dn()
        }
        if (!inrec) {
          if ($0 ~ /^dn:/) { inrec = 1; indn = 1; records++; dn = $0; dnlines = $0 "\n"; next }
          next   # blank lines, comments and "version: 1" between records
        }
        if ($0 == "") { print "" > file; inrec = 0; next }
        print > file
      }
      END {
        if (indn) flush_dn()
        if (inrec) print "" > file
        print records > out
      }' || fail 16 IoError "could not read the LDIF on stdin into $work"
    records="$(cat "$work/records")"
    [ "${records:-0}" -gt 0 ] || fail 16 IoError "the artifact on stdin holds no LDIF entries"
    cat "$work/depth"/d*.ldif | ldapadd -x -H "$url" -D "$bind" -y "$pwfile" -o nettimeout="$timeout" $tls \
      -M >"$work/added" 2>"$work/err"
    rc=$?
    if [ "$rc" != 0 ]; then
      added="$(grep -c '^adding new entry' "$work/added")"
      [ "$added" -gt 0 ] && added=$((added - 1))
      if [ "$rc" = 68 ]; then
        fail 21 DestinationNotEmpty "an entry of the backup already exists on $url ($(tr '\n' ' ' <"$work/err" | cut -c1-200)); $added of $records entries were added before it"
      fi
      if [ "$rc" = 32 ] && [ "$added" -gt 0 ]; then
        fail 14 RemoteError "ldapadd stopped after $added of $records entries: the parent of an entry is missing ($(tr '\n' ' ' <"$work/err" | cut -c1-200)); is the LDIF a backup of $base made by this plugin?"
      fi
      if [ "$rc" = 32 ]; then
        fail 11 NotFound "the parent of $base does not exist on $url, so ldapadd cannot add it: the server must hold a suffix (database) that contains spec.external.config.baseDn"
      fi
      printf 'ldap plugin: ldapadd stopped after adding %s of %s entries\n' "$added" "$records" >&2
      ldap_fail "$rc" "$work/err" "restore (ldapadd, $added of $records entries added before the failure)"
    fi
    jq -n --arg m "restored $records entries under $base to $url" '{message: $m}' | write_report
    ;;
esac
exit 0
