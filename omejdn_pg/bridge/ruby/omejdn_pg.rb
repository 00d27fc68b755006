# frozen_string_literal: true

# omejdn_pg: Omejdn's storage on PostgreSQL, through the `omejdn-pg serve` service.
#
# Every storage event of Omejdn's core (users, clients, configuration, keys) is
# forwarded over a Unix socket to `omejdn-pg serve`, one JSON-RPC 2.0 request per
# event, one JSON object per line. Installed by `omejdn-pg bridge install DIR`
# as DIR/plugins/omejdn_pg/omejdn_pg.rb and configured in Omejdn's plugin file:
#
#   plugins:
#     omejdn_pg:
#       socket: /run/omejdn-pg/omejdn-pg.sock
#       timeout: 5          # seconds, bounds every call (default 5)
#       backend: yaml       # the user backend name it answers for (default yaml)
#       cache: true         # keep config sections and key sets while the service
#                           # vouches for them (default true)
#       watch_interval: 1   # the service's --interval (default 1): copies are
#                           # dropped after 3 intervals without a word from it
#   deactivate_defaults: [config, keys, client, user]
#
# Trade-offs. Each thread keeps its own connection, so Thin's worker threads never
# queue behind one another's round trip and no lock is taken on the way. Any
# failure (service down, timeout, malformed reply, an error answer) RAISES an
# OmejdnPg::Error: a nil would mean "no such client" or "no signing key yet, make
# one" to the core, which would then answer invalid_client or generate and store a
# key. Configuration sections and key sets (10 of the 11 events of a token
# request) are kept in process only while a `watch` connection to the service is
# alive and reports no change; a notice, a silence of three intervals or a lost
# connection drops them, so a rotated key reaches signing within the service's
# read-cache staleness plus one interval.
#
# Backend name. `deactivate_defaults: [user]` removes the core's default user store,
# whose name is 'yaml': the core's own callers use that name for "the default
# store" (DefaultUserDB acts only on backend 'yaml', admin API v2 stamps new users
# and clients with 'yaml', the admin UI posts userBackend 'yaml'), and an unset
# `user_backend_default` reaches USER_CREATE as nil. So by default this plugin
# takes over that name: it acts on users whose backend is its name or nil, answers
# users stamped with its name, and leaves every other backend (e.g. 'ldap') alone.
# Clients have no backend routing in the core (admin API v1 says 'default'), so
# client events with backend nil, 'default', 'yaml' or its name are its own.
#
# Uses only Ruby's standard library plus what Omejdn has loaded (User, Client,
# PluginLoader, and JWT::JWK::Set when a client's keys arrive as one).

require 'socket'
require 'json'
require 'io/wait'

# Omejdn's storage through the omejdn-pg service.
module OmejdnPg
  PROTOCOL = 1
  CLIENT_NAME = 'omejdn_pg.rb 1'
  DEFAULT_TIMEOUT = 5.0

  # Any failure of the service or the socket. `remote_class` names the service's
  # error class (e.g. "StorageUnavailable") when the service answered with an error.
  class Error < StandardError
    attr_reader :remote_class

    def initialize(message, remote_class = nil)
      super(message)
      @remote_class = remote_class
    end
  end

  # The service cannot be reached, did not answer in time, or answered nonsense.
  class Unavailable < Error; end

  # The service answered the request with an error.
  class ServiceError < Error; end

  def self.now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # One connection to the service: newline-framed JSON-RPC, every step bounded by
  # the deadline of the call. Not shared between threads.
  class Connection
    attr_reader :hello, :pid

    def initialize(path, timeout)
      @pid = Process.pid
      @path = path
      @timeout = timeout
      @buffer = +''
      @id = 0
      @socket = connect(OmejdnPg.now + timeout)
      @hello = call('hello', { 'protocol' => PROTOCOL, 'client' => CLIENT_NAME })
    rescue StandardError
      close
      raise
    end

    # True unless the service has closed its end (a restart): checked before reuse
    # so a request is never sent on a dead connection. A stray byte also retires it.
    def usable?
      return false if @socket.nil? || @pid != Process.pid # a forked child never shares it

      @socket.read_nonblock(1, exception: false) == :wait_readable
    rescue StandardError
      false
    end

    def call(method, params, timeout = @timeout)
      deadline = OmejdnPg.now + timeout
      id = (@id += 1)
      write(JSON.generate({ 'jsonrpc' => '2.0', 'id' => id, 'method' => method, 'params' => params }) << "\n",
            deadline, method)
      reply = parse(read_line(deadline, method), method)
      # An error the service could not tie to a request (a refused peer) has id null.
      result_of(reply, method) if reply['id'].nil? && reply.key?('error')
      unless reply['id'] == id
        close
        raise Unavailable, "omejdn-pg service at #{@path}: reply to #{method} carries id #{reply['id'].inspect}, " \
                           "expected #{id}"
      end
      result_of(reply, method)
    end

    # The next message (a notification on a watch connection), or nil after `timeout`.
    def receive(timeout)
      line = read_line(OmejdnPg.now + timeout, 'watch', quiet: true)
      line && parse(line, 'watch')
    end

    def close
      @socket&.close
    rescue IOError
      nil
    ensure
      @socket = nil
    end

    private

    def connect(deadline)
      socket = Socket.new(:UNIX, :STREAM)
      begin
        if socket.connect_nonblock(Socket.sockaddr_un(@path), exception: false) == :wait_writable
          wait(socket, :wait_writable, deadline, 'connect')
          socket.connect_nonblock(Socket.sockaddr_un(@path), exception: false)
        end
      rescue Errno::EISCONN
        nil
      end
      socket
    rescue SystemCallError => e
      socket&.close
      raise Unavailable, "omejdn-pg service at #{@path} cannot be reached: #{e.message}"
    end

    def wait(socket, how, deadline, method)
      remaining = deadline - OmejdnPg.now
      return if remaining.positive? && socket.public_send(how, remaining)

      close
      socket.close unless socket.closed?
      raise Unavailable, "omejdn-pg service at #{@path}: no answer to #{method} within #{@timeout} s"
    end

    def write(data, deadline, method)
      until data.empty?
        written = @socket.write_nonblock(data, exception: false)
        if written == :wait_writable
          wait(@socket, :wait_writable, deadline, method)
        else
          data = data.byteslice(written..)
        end
      end
    rescue SystemCallError, IOError => e
      said_before_closing(method)
      close
      raise Unavailable, "omejdn-pg service at #{@path}: #{method} could not be sent: #{e.message}"
    end

    # The service may have answered and closed before the request was written (a refused
    # peer): raise what it said, if it said anything.
    def said_before_closing(method)
      chunk = @socket.read_nonblock(65_536, exception: false)
      return unless chunk.is_a?(String) && (line = (@buffer + chunk)[/\A[^\n]*\n/])

      reply = JSON.parse(line)
      return unless reply.is_a?(Hash) && reply['error']

      close
      result_of(reply, method)
    rescue SystemCallError, IOError, JSON::ParserError
      nil
    end

    def read_line(deadline, method, quiet: false)
      loop do
        if (newline = @buffer.index("\n"))
          line = @buffer.slice!(0, newline + 1)
          return line
        end
        chunk = @socket.read_nonblock(65_536, exception: false)
        case chunk
        when :wait_readable
          remaining = deadline - OmejdnPg.now
          next if remaining.positive? && @socket.wait_readable(remaining)
          return nil if quiet

          close
          raise Unavailable, "omejdn-pg service at #{@path}: no answer to #{method} within #{@timeout} s"
        when nil
          close
          raise Unavailable, "omejdn-pg service at #{@path} closed the connection during #{method}"
        else
          @buffer << chunk
        end
      end
    rescue SystemCallError, IOError => e
      close
      raise Unavailable, "omejdn-pg service at #{@path}: #{method} failed: #{e.message}"
    end

    def parse(line, method)
      reply = JSON.parse(line)
      return reply if reply.is_a?(Hash) && reply['jsonrpc'] == '2.0'

      close
      raise Unavailable, "omejdn-pg service at #{@path}: malformed reply to #{method} (not a JSON-RPC 2.0 object)"
    rescue JSON::ParserError
      close
      raise Unavailable, "omejdn-pg service at #{@path}: malformed reply to #{method} (not JSON)"
    end

    def result_of(reply, method)
      if (error = reply['error'])
        error = {} unless error.is_a?(Hash)
        data = error['data'].is_a?(Hash) ? error['data'] : {}
        raise ServiceError.new("omejdn-pg service: #{method} failed: #{data['class'] || 'error'}: " \
                               "#{error['message']}", data['class'])
      end
      return reply['result'] if reply.key?('result')

      close
      raise Unavailable, "omejdn-pg service at #{@path}: malformed reply to #{method} (neither result nor error)"
    end
  end

  # Follows the service's change stream on a thread of its own and says whether
  # in-process copies of a group ('config', 'keys') are still current. Each group
  # has a generation: a copy made under an older generation is never served.
  class Watch
    GROUPS = %w[config keys].freeze

    def initialize(path, timeout, interval)
      @path = path
      @timeout = timeout
      @generations = GROUPS.to_h { |g| [g, 0] }
      @live = false
      @default_interval = interval
      @interval = interval
      @last_message = 0.0
      @thread = nil
      @lock = Mutex.new
      @pid = Process.pid
    end

    # The generation of `group` while the stream vouches for it, else nil.
    def generation(group)
      forked if @pid != Process.pid
      ensure_running
      return nil unless @live && OmejdnPg.now - @last_message < 3 * @interval

      @generations[group]
    end

    # Our own write: copies of the group are dropped at once, not when the notice comes.
    def changed(group)
      @lock.synchronize { @generations[group] += 1 }
    end

    private

    # In a forked child the stream (a thread of the parent) is gone: nothing is vouched for.
    def forked
      @lock = Mutex.new
      @pid = Process.pid
      @live = false
      @thread = nil
      GROUPS.each { |g| @generations[g] += 1 }
    end

    def ensure_running
      return if @thread&.alive?

      @lock.synchronize do
        return if @thread&.alive?

        @thread = Thread.new { follow }
        @thread.name = 'omejdn_pg watch' if @thread.respond_to?(:name=)
      end
    end

    def follow
      loop do
        stream
        sleep 1
      end
    end

    def stream
      connection = Connection.new(@path, @timeout)
      answer = connection.call('watch', {})
      return sleep(30) unless answer.is_a?(Hash) && answer['watching'] == true

      @interval = Float(answer['interval'] || @default_interval)
      @last_message = OmejdnPg.now
      @live = true
      loop do
        message = connection.receive(3 * @interval)
        break if message.nil?

        @last_message = OmejdnPg.now
        next unless message['method'] == 'changed'

        groups = message.dig('params', 'groups')
        [*(groups.is_a?(Array) ? groups : GROUPS)].each { |g| changed(g) if @generations.key?(g) }
      end
    rescue ServiceError => e
      # A service running without its read cache refuses to watch: ask again rarely.
      connection&.close
      sleep(29) if e.remote_class == 'ConfigurationError'
    rescue StandardError
      nil
    ensure
      @live = false
      GROUPS.each { |g| changed(g) }
      connection&.close
    end
  end

  # The plugin: a listener per storage event, one connection per thread.
  class Bridge
    CLIENT_BACKENDS = [nil, 'default', 'yaml'].freeze

    attr_reader :socket_path, :backend

    def initialize(config)
      @socket_path = config['socket'] or raise Error, "omejdn_pg: the plugin configuration needs 'socket: PATH'"
      @timeout = Float(config['timeout'] || DEFAULT_TIMEOUT)
      raise Error, "omejdn_pg: 'timeout' must be positive, got #{@timeout}" unless @timeout.positive?

      @backend = (config['backend'] || 'yaml').to_s
      interval = Float(config['watch_interval'] || 1.0)
      @watch = config.fetch('cache', true) ? Watch.new(@socket_path, @timeout, interval) : nil
      @copies = { 'config' => {}, 'keys' => {} }
      @thread_key = :"omejdn_pg_connection_#{object_id}"
      @service_names = {}
    end

    # The names the service stamps on its users and clients: from its hello when it
    # says them, else learned from its answers. Objects this plugin owns are sent
    # under that name, so the service's own routing recognises them as its own.
    def learn(group, name)
      @service_names[group] = name if name.is_a?(String) && @service_names[group] != name
    end

    def service_name(group)
      @service_names[group] || @service_names['user']
    end

    # One request on this thread's connection; a connection the service has closed
    # since (a restart) is replaced before anything is sent.
    def call(method, params)
      connection = Thread.current[@thread_key]
      unless connection&.usable?
        connection&.close if connection&.pid == Process.pid
        connection = Thread.current[@thread_key] = Connection.new(@socket_path, @timeout)
        names = connection.hello.is_a?(Hash) ? connection.hello['backends'] : nil
        names.each { |group, name| learn(group, name) } if names.is_a?(Hash)
      end
      connection.call(method, params)
    rescue Error
      raise
    rescue StandardError => e
      Thread.current[@thread_key]&.close
      Thread.current[@thread_key] = nil
      raise Unavailable, "omejdn-pg service at #{@socket_path}: #{method} failed: #{e.class}: #{e.message}"
    end

    # An answer of a group the service announces changes of: served from the
    # in-process copy while the change stream vouches for it.
    def cached(group, key, method, params)
      generation = @watch&.generation(group)
      return call(method, params) if generation.nil?

      copy = @copies[group][key]
      return JSON.parse(copy[1]) if copy && copy[0] == generation

      result = call(method, params)
      @copies[group][key] = [generation, JSON.generate(result)].freeze if @watch.generation(group) == generation
      result
    end

    def wrote(group)
      @watch&.changed(group)
      @copies[group] = {}
    end

    # ----- users -----

    def own_user?(name)
      name.nil? || name == @backend
    end

    def user_from(hash)
      return nil if hash.nil?

      learn('user', hash['backend'])
      hash['backend'] = @backend
      # No consent given yet: the core's stores leave the key out (User#to_h compacts a nil).
      hash.delete('consent') if hash['consent'] == {}
      ::User.from_h(hash)
    end

    def sent_user(user)
      hash = user.to_h
      hash['backend'] = service_name('user') || hash['backend']
      hash
    end

    def user_get(bind)
      user_from(call('USER_GET', { 'username' => bind.local_variable_get(:username) }))
    end

    def user_get_all(_bind = nil)
      call('USER_GET_ALL', {}).map { |h| user_from(h) }
    end

    def user_create(bind)
      user = bind.local_variable_get(:user)
      user_backend = bind.local_variable_get(:user_backend)
      return unless own_user?(user_backend.nil? ? user.backend : user_backend)

      call('USER_CREATE', { 'user' => sent_user(user), 'user_backend' => service_name('user') || user_backend })
    end

    def user_update(bind)
      user = bind.local_variable_get(:user)
      return unless own_user?(user.backend)

      call('USER_UPDATE', { 'user' => sent_user(user) })
    end

    def user_delete(bind)
      call('USER_DELETE', { 'username' => bind.local_variable_get(:username) })
    end

    def password_change(bind)
      user = bind.local_variable_get(:user)
      return unless own_user?(user.backend)

      call('USER_AUTHENTICATION_PASSWORD_CHANGE',
           { 'user' => sent_user(user), 'password' => bind.local_variable_get(:password) })
    end

    def password_verify(bind)
      user = bind.local_variable_get(:user)
      return nil unless own_user?(user.backend)

      call('USER_AUTHENTICATION_PASSWORD_VERIFY',
           { 'user' => sent_user(user), 'password' => bind.local_variable_get(:password) })
    end

    # ----- clients -----

    def own_client?(name)
      CLIENT_BACKENDS.include?(name) || name == @backend
    end

    # The core's shape: metadata with string keys, `jwks` as JWT::JWK::Set#export
    # gives it (symbol keys), no `backend` among the metadata.
    def client_from(hash)
      return nil if hash.nil?

      learn('client', hash.delete('backend'))
      if (jwks = hash['jwks']).is_a?(Hash)
        hash['jwks'] = { keys: [*(jwks['keys'] || jwks[:keys])].map { |k| k.transform_keys(&:to_sym) } }
      end
      client = ::Client.from_h(hash)
      client.backend = @backend if client.respond_to?(:backend=)
      client
    end

    # Client#to_h, with a key set that arrived as a JWT::JWK::Set object exported
    # as the Hash the core stores (private members kept, as the core keeps them).
    def client_hash(client)
      hash = { 'attributes' => client.attributes }.merge(client.metadata || {})
      jwks = hash['jwks']
      hash['jwks'] = jwks.export(include_private: true) if !jwks.nil? && !jwks.is_a?(Hash) && jwks.respond_to?(:export)
      hash['backend'] = service_name('client')
      hash.compact
    end

    def client_get(bind)
      client_id = bind.local_variable_get(:client_id)
      return nil if client_id.nil?

      client_from(call('CLIENT_GET', { 'client_id' => client_id }))
    end

    def client_get_all(_bind = nil)
      call('CLIENT_GET_ALL', {}).map { |h| client_from(h) }
    end

    def client_create(bind)
      client = bind.local_variable_get(:client)
      client_backend = bind.local_variable_get(:client_backend)
      return unless own_client?(client_backend)

      call('CLIENT_CREATE', { 'client' => client_hash(client),
                              'client_backend' => service_name('client') || client_backend })
    end

    def client_update(bind)
      client = bind.local_variable_get(:client)
      return unless own_client?(client.respond_to?(:backend) ? client.backend : nil)

      call('CLIENT_UPDATE', { 'client' => client_hash(client) })
    end

    def client_delete(bind)
      call('CLIENT_DELETE', { 'client_id' => bind.local_variable_get(:client_id) })
    end

    # ----- configuration and keys -----

    def config_store(bind)
      section = bind.local_variable_get(:section)
      call('CONFIGURATION_STORE', { 'section' => section, 'data' => bind.local_variable_get(:data) })
    ensure
      wrote('config')
    end

    def config_load(bind)
      section = bind.local_variable_get(:section)
      cached('config', section, 'CONFIGURATION_LOAD',
             { 'section' => section, 'fallback' => bind.local_variable_get(:fallback) })
    end

    def keys_store(bind)
      params = %i[target_type target jwks].to_h { |n| [n.to_s, bind.local_variable_get(n)] }
      call('KEYS_STORE', params)
    ensure
      wrote('keys')
    end

    def keys_load(bind)
      params = %i[target_type target create].to_h { |n| [n.to_s, bind.local_variable_get(n)] }
      cached('keys', params.values.join("\0"), 'KEYS_LOAD', params)
    end

    def keys_load_all(bind)
      target_type = bind.local_variable_get(:target_type)
      cached('keys', "#{target_type}\0*", 'KEYS_LOAD_ALL', { 'target_type' => target_type })
    end

    EVENTS = {
      'USER_GET' => :user_get,
      'USER_GET_ALL' => :user_get_all,
      'USER_CREATE' => :user_create,
      'USER_UPDATE' => :user_update,
      'USER_DELETE' => :user_delete,
      'USER_AUTHENTICATION_PASSWORD_CHANGE' => :password_change,
      'USER_AUTHENTICATION_PASSWORD_VERIFY' => :password_verify,
      'CLIENT_GET' => :client_get,
      'CLIENT_GET_ALL' => :client_get_all,
      'CLIENT_CREATE' => :client_create,
      'CLIENT_UPDATE' => :client_update,
      'CLIENT_DELETE' => :client_delete,
      'CONFIGURATION_STORE' => :config_store,
      'CONFIGURATION_LOAD' => :config_load,
      'KEYS_STORE' => :keys_store,
      'KEYS_LOAD' => :keys_load,
      'KEYS_LOAD_ALL' => :keys_load_all
    }.freeze

    def register(loader)
      EVENTS.each { |event, name| loader.register(event, method(name)) }
      self
    end
  end

  def self.install(loader = PluginLoader)
    @bridge = Bridge.new(loader.configuration('omejdn_pg')).register(loader)
  end

  class << self
    attr_reader :bridge
  end
end

OmejdnPg.install
