// GraphiQL on this server: queries and mutations over POST /graphql, subscriptions over
// graphql-transport-ws at /graphql/ws. With auth on, put the key in the Headers tab as
// {"Authorization": "Bearer <key>"}: GraphiQL sends those headers with every HTTP request and,
// for subscriptions, as the connection_init payload, where the server reads it too.
"use strict";

const endpoint = new URL("/graphql", location.href);
const socket = new URL("/graphql/ws", location.href);
socket.protocol = location.protocol === "https:" ? "wss:" : "ws:";

const fetcher = GraphiQL.createFetcher({
  url: endpoint.toString(),
  subscriptionUrl: socket.toString(),
});

ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {
    fetcher,
    defaultEditorToolsVisibility: true,
    defaultQuery: `# Queries and mutations run over HTTP, subscriptions over WebSocket.
# With auth on, open Headers below and add {"Authorization": "Bearer <key>"}.
query Models {
  imageModels {
    name
  }
}
`,
  }),
);
