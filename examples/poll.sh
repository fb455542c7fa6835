#!/usr/bin/env bash
# The legacy REST flow, as the older server's clients do it with curl and jq: create a user,
# create an image task, poll its result until it is finished, print the image URL.
#
#   API_URL=http://127.0.0.1:8080 ./examples/poll.sh "一只可爱的小猫咪在花园里玩耍"
#   API_URL=… API_KEY=vas_… ./examples/poll.sh "a lighthouse at night"
#
# API_KEY (optional; none when the server runs without keys) is sent as `Authorization: Bearer`.
# With the admin key, or none, a user is created for the task. A user's key may not create
# users: the task then goes to the key's own user. Exits non-zero unless the task completes.
set -euo pipefail
B=${API_URL:-http://127.0.0.1:8080}
PROMPT=${1:-一只可爱的小猫咪在花园里玩耍}
EMAIL=${USER_EMAIL:-poll-$$-$RANDOM@example.com}
AUTH=()
[ -n "${API_KEY:-}" ] && AUTH=(-H "Authorization: Bearer $API_KEY")
TIMEOUT=${POLL_TIMEOUT:-120}

USER_JSON=$(curl -sS -w '\n%{http_code}' -X POST "$B/api/v1/users" "${AUTH[@]}" \
  -H 'Content-Type: application/json' \
  -d "$(jq -n --arg e "$EMAIL" '{email: $e, name: "Poll Example"}')")
case $(tail -n1 <<<"$USER_JSON") in
  201) USER_ID=$(head -n -1 <<<"$USER_JSON" | jq -er .data.id); echo "user $USER_ID" >&2 ;;
  403) USER_ID=""; echo "a user's key: the task goes to the key's own user" >&2 ;;
  *) echo "creating the user failed: $(head -n -1 <<<"$USER_JSON")" >&2; exit 1 ;;
esac

TASK_ID=$(curl -sS -X POST "$B/api/v1/ai/image/task" "${AUTH[@]}" -H 'Content-Type: application/json' \
  -d "$(jq -n --arg p "$PROMPT" --arg u "$USER_ID" \
    '{prompt: $p, model: "doubao-seedream-3.0-t2i", size: "1024x1024"}
     + (if $u == "" then {} else {user_id: $u} end)')" \
  | jq -er .data.task_id)
echo "task $TASK_ID" >&2

deadline=$((SECONDS + TIMEOUT))
while :; do
  RESULT=$(curl -sS "${AUTH[@]}" "$B/api/v1/ai/image/result/$TASK_ID")
  STATUS=$(jq -r .data.status <<<"$RESULT")
  echo "status $STATUS" >&2
  case $STATUS in
    completed) break ;;
    failed | cancelled)
      echo "task $STATUS: $(jq -c '.data.error' <<<"$RESULT")" >&2
      exit 1 ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then echo "still $STATUS after ${TIMEOUT}s" >&2; exit 1; fi
  sleep 1
done
jq -er .data.result.image_url <<<"$RESULT"
