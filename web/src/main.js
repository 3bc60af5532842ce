import { createApp } from 'vue'
import './style.css'
import App from './App.vue'
import { makeRouter } from './router.js'

createApp(App).use(makeRouter()).mount('#app')
