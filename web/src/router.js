import { createRouter, createWebHistory } from 'vue-router'
import { connection, setUnauthorizedHandler } from './api.js'
import { stopLive } from './events.js'
import { checkSession, session } from './session.js'
import Login from './pages/Login.vue'
import Chat from './pages/Chat.vue'

export const routes = [
  { path: '/', redirect: '/chat' },
  { path: '/login', name: 'login', component: Login },
  { path: '/chat/:id?', name: 'chat', component: Chat },
  { path: '/memory', name: 'memory', component: () => import('./pages/Memory.vue') },
  { path: '/devices', name: 'devices', component: () => import('./pages/Devices.vue') },
  { path: '/sync', name: 'sync', component: () => import('./pages/Sync.vue') },
  { path: '/system', name: 'system', component: () => import('./pages/System.vue') },
  { path: '/:rest(.*)*', redirect: '/chat' },
]

export function makeRouter(history = createWebHistory('/')) {
  const router = createRouter({ history, routes })

  router.beforeEach(async (to) => {
    if (to.name === 'login') return true
    const authed = await checkSession()
    if (authed === false) return { name: 'login', query: { next: to.fullPath } }
    return true
  })

  // Any 401 from the API: the session is gone; log in again and come back.
  setUnauthorizedHandler((reason) => {
    session.authed = false
    stopLive()
    connection.authMessage = reason
    const here = router.currentRoute.value
    if (here.name !== 'login') router.push({ name: 'login', query: { next: here.fullPath } })
  })
  return router
}
