import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'
import tailwindcss from '@tailwindcss/vite'

// The build lands inside the Python package, which serves it (kiana serve).
// In development, `npm run dev` proxies the API to a node on 127.0.0.1:8765.
const api = process.env.KIANA_API || 'http://127.0.0.1:8765'

export default defineConfig({
  base: '/',
  plugins: [vue(), tailwindcss()],
  build: {
    outDir: '../src/kiana/web/dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 300,
  },
  server: {
    proxy: {
      '/api': { target: api, changeOrigin: false },
      '/auth': { target: api },
      '/healthz': { target: api },
      '/readyz': { target: api },
      '/docs': { target: api },
      '/openapi.json': { target: api },
    },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.js'],
  },
})
