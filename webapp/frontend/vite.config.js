import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The only place that knows the deployment URL: Django serves dist/index.html at "/"
// and dist/assets/* under /static/assets/ (whitenoise).
const BASE = "/static/";

export default defineConfig({
  base: BASE,
  plugins: [react()],
  // `npm run dev` talks to `python webapp/manage.py runserver` on port 8000.
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
  test: {
    environment: "jsdom",
    setupFiles: ["./src/test-setup.js"],
  },
});
