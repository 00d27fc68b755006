# frozen_string_literal: true

# A stand-in for the parts of Omejdn's core the omejdn_pg plugin touches, so the
# plugin can be tested with Debian's plain `ruby` and nothing else (no Sinatra,
# no bcrypt gem, no ruby-jwt). It keeps the core's contract, not its code:
#
# - PluginLoader reads the plugin files named in OMEJDN_PLUGINS, requires each
#   configured plugin from OMEJDN_PG_PLUGIN_DIR/<name>/<name>.rb, and `fire`s an
#   event by calling every listener with the caller's Binding and returning all
#   their values, in registration order.
# - User.from_h / #to_h and Client.from_h / #to_h have the core's keys. The core
#   wraps a password hash in BCrypt::Password; here it stays the hash string
#   (the plugin only ever passes it through #to_s).
# - JWT::JWK::Set is a minimal object with #export, for the case of a client whose
#   keys arrive as a key set object instead of a Hash.

require 'yaml'
require 'json'

# Event dispatch as Omejdn's core does it: listeners read the caller's locals.
class PluginLoader
  @configuration = {}
  @listeners = {}

  class << self
    attr_reader :listeners

    def initialize_from_env
      ENV.fetch('OMEJDN_PLUGINS', '').split(':').each do |file|
        @configuration.merge!(YAML.safe_load(File.read(file)) || {})
      end
      (@configuration['plugins'] || {}).each_key do |name|
        require File.expand_path(File.join(ENV.fetch('OMEJDN_PG_PLUGIN_DIR'), name, name))
      end
    end

    def configuration(plugin)
      @configuration.dig('plugins', plugin) || {}
    end

    def register(event, listener)
      (@listeners[event] ||= []) << listener
    end

    def fire(event, bind)
      (@listeners[event] || []).map { |listener| listener.call(bind) }
    end
  end
end

# A user as the core holds it.
class User
  attr_accessor :username, :password, :attributes, :extern, :backend, :consent

  def self.from_h(hash)
    user = new
    user.username = hash['username']
    user.attributes = hash['attributes']
    user.extern = hash['extern']
    user.backend = hash['backend']
    user.consent = hash['consent']
    user.password = hash['password'] unless user.extern
    user
  end

  def to_h
    { 'username' => username, 'attributes' => attributes, 'password' => password&.to_s,
      'extern' => extern, 'backend' => backend, 'consent' => consent }.compact
  end
end

# A client as the core holds it: metadata with string keys, attributes apart.
class Client
  attr_accessor :metadata, :attributes, :backend

  def self.from_h(hash)
    client = new
    client.attributes = hash.delete('attributes') || []
    client.metadata = hash
    client
  end

  def to_h
    { 'attributes' => attributes }.merge(metadata).compact
  end

  def client_id
    metadata['client_id']
  end
end

module JWT
  module JWK
    # Just enough of ruby-jwt's key set: an object that exports to the JWK Set Hash.
    class Set
      def initialize(hash)
        @keys = hash['keys'] || hash[:keys] || []
      end

      def export(options = {})
        keys = @keys.map { |k| k.transform_keys(&:to_sym) }
        keys = keys.map { |k| k.except(:d, :p, :q, :dp, :dq, :qi) } unless options[:include_private]
        { keys: keys }
      end
    end
  end
end
