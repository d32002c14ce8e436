import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// The built files are embedded into the binary by tauri-build (frontendDist).
export default defineConfig(({ mode }) => ({
  plugins: [svelte()],
  // Component tests mount Svelte's browser build.
  resolve: mode === "test" ? { conditions: ["browser"] } : undefined,
  clearScreen: false,
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "safari16",
  },
  test: {
    include: ["src/**/*.test.ts"],
  },
}));
